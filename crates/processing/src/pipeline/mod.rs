//! txt2img and img2img on a loaded model, stage by stage (text encode → sample → decode), so the runner
//! can time and observe each stage: A1111's `process_images` core without the file side.

mod image;
mod inpaint;
mod unet;
mod upscale;

use std::sync::Arc;

use sdrt_models::{LoadedModel, ModelFamily as LoadedFamily, PredictionType, TextLayer};

pub use image::{RgbImage, approx_cheap_preview, images_to_tensor, latents_to_images};
pub use inpaint::LatentMask;
pub use upscale::{LatentUpscaleMode, upscale_latents};

use crate::brownian::BrownianNoise;
use crate::conditioning::{
    ClipTextEncoder, Conditioner, Embedder, Emphasis, PromptSchedule, PromptTokenizer, TextualInversion, TokenEmbedding,
};
use crate::denoiser::{DiscreteDenoiser, Prediction, Tensor};
use crate::error::{Error, Result};
use crate::guidance::{CfgDenoiser, ScheduledCond};
use crate::model_schedule::ModelSchedule;
use crate::noise::{ImageRng, NoiseParams};
use crate::prompt::ScheduleSteps;
use crate::sampling::{Hooks, Img2ImgSteps, Sampled, Sampler};
use crate::schedules::ModelFamily;

/// The image/latent size ratio of every SD VAE.
pub const LATENT_FACTOR: usize = 8;
/// Latent channels of SD 1.x / 2.x / XL.
pub const LATENT_CHANNELS: usize = 4;

/// Everything one batch needs, already resolved (seeds fixed, names parsed).
#[derive(Debug, Clone)]
pub struct GenerationSpec {
    /// One prompt per image.
    pub prompts: Vec<String>,
    /// One negative prompt per image.
    pub negative_prompts: Vec<String>,
    /// Sampling steps as requested (img2img runs about `steps · denoising_strength` of them).
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub cfg_scale: f64,
    /// Image width in pixels (multiple of 8).
    pub width: usize,
    /// Image height in pixels (multiple of 8).
    pub height: usize,
    /// Sampler and schedule.
    pub sampler: Sampler,
    /// Seeds, variation, random source and ENSD; `latent_shape` is filled from the size.
    pub noise: NoiseParams,
    /// A1111's "Clip skip" (`CLIP_stop_at_last_layers`), 1 = the last layer. SD 1.x only.
    pub clip_skip: u32,
    /// How prompt weights act on the embeddings.
    pub emphasis: Emphasis,
    /// img2img: how much of the schedule to run on the init latent.
    pub denoising_strength: Option<f64>,
    /// A1111's `pad_cond_uncond`: pad the shorter of cond/uncond with empty-prompt chunks so they share one
    /// UNet call (off by default, as in A1111; changes results slightly).
    pub pad_cond_uncond: bool,
    /// For a hires pass: the first pass's prompt-schedule step count. A1111 continues prompt-editing timelines
    /// into the second pass (integer steps count on after it, fractions from 1.0 up), and the pass runs
    /// exactly `steps` denoising steps.
    pub after_first_pass: Option<usize>,
    /// img2img: A1111's `initial_noise_multiplier`, applied to the first noise draw (1 = off).
    pub noise_multiplier: f64,
    /// The textual-inversion embeddings prompts may name.
    pub textual_inversions: Arc<Vec<TextualInversion>>,
}

/// What an img2img pass starts from besides its noise.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassInputs<'a> {
    /// The VAE latents to start from (img2img, hires); `None` = txt2img from noise.
    pub init_latent: Option<&'a Tensor>,
    /// Inpainting: the area to repaint; everything else stays on `init_latent`.
    pub mask: Option<&'a LatentMask>,
    /// Inpainting UNets: `[B, 5, h, w]` mask + masked-image latents (see [`Pipeline::inpainting_conditioning`]).
    pub image_conditioning: Option<&'a Tensor>,
}

impl GenerationSpec {
    /// Images in the batch.
    pub fn batch_size(&self) -> usize {
        self.prompts.len()
    }

    /// The latent shape `[C, H/8, W/8]` of one image.
    pub fn latent_shape(&self) -> [usize; 3] {
        [LATENT_CHANNELS, self.height / LATENT_FACTOR, self.width / LATENT_FACTOR]
    }

    fn check(&self) -> Result<()> {
        if self.prompts.is_empty() {
            return Err(invalid("prompt", "the batch has no prompts; pass at least one".into()));
        }
        if self.negative_prompts.len() != self.prompts.len() || self.noise.seeds.len() != self.prompts.len() {
            return Err(invalid(
                "batch_size",
                format!(
                    "{} prompts, {} negative prompts and {} seeds; pass one of each per image",
                    self.prompts.len(),
                    self.negative_prompts.len(),
                    self.noise.seeds.len()
                ),
            ));
        }
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if side == 0 || side % LATENT_FACTOR != 0 {
                return Err(invalid(field, format!("{side} is not a positive multiple of 8; round it to one")));
            }
        }
        if self.steps == 0 {
            return Err(invalid("steps", "0 steps; pass at least 1".into()));
        }
        if self.clip_skip == 0 {
            return Err(invalid("clip_skip", "0 is not a layer count; 1 means the last layer".into()));
        }
        Ok(())
    }

    /// How much of the schedule an img2img pass runs: a hires pass runs exactly `steps` (A1111 hands it its
    /// step count, which selects the fix-steps branch); plain img2img runs ⌊strength·steps⌋.
    pub fn img2img_steps(&self, strength: f64) -> Result<Img2ImgSteps> {
        if self.after_first_pass.is_some() {
            Img2ImgSteps::exactly(self.steps, strength)
        } else {
            Img2ImgSteps::from_strength(self.steps, strength)
        }
    }

    /// The step count prompt schedules are built over: second-order samplers call the model twice per
    /// step, and A1111 counts model calls (`SamplerData.total_steps`).
    pub fn schedule_steps(&self) -> ScheduleSteps {
        let factor = if self.sampler.kind().is_second_order() { 2 } else { 1 };
        let total = self.steps * factor;
        match self.after_first_pass {
            Some(base) => ScheduleSteps { base, hires: Some(total), old_scheduling: false },
            None => ScheduleSteps::new(total),
        }
    }
}

fn invalid(field: &'static str, problem: String) -> Error {
    Error::InvalidParameter { field, problem }
}

/// Per image: the `AND` sub-prompts (schedule, weight) and the negative prompt's schedule.
#[derive(Debug, Clone)]
pub struct BatchConditioning {
    /// Per image, its sub-prompts with their weights.
    pub conds: Vec<Vec<(PromptSchedule, f64)>>,
    /// Per image, the negative prompt.
    pub unconds: Vec<PromptSchedule>,
    /// Text-encoder calls made (identical prompts are encoded once).
    pub encoder_calls: usize,
    /// The empty prompt's conditioning, when the spec asks for `pad_cond_uncond`.
    pub empty: Option<Arc<crate::conditioning::Cond>>,
}

/// What sampling produced.
#[derive(Debug)]
pub struct SampleOutput {
    /// Final latents `[B, 4, h, w]` as the sampler returns them (before ÷ the VAE scaling factor).
    pub sampled: Sampled,
    /// UNet forward calls made.
    pub unet_calls: usize,
}

/// A loaded model driven stage by stage.
pub struct Pipeline<'m> {
    model: &'m mut LoadedModel,
    schedule: ModelSchedule,
    prediction: Prediction,
}

impl<'m> Pipeline<'m> {
    /// The model, to change what is merged into it between passes (LoRA networks).
    pub fn model_mut(&mut self) -> &mut LoadedModel {
        self.model
    }

    /// Checks what the model folder says about its noise schedule and wraps it.
    pub fn new(model: &'m mut LoadedModel) -> Result<Self> {
        let config = &model.folder.scheduler;
        if !matches!(config.beta_schedule.as_str(), "scaled_linear" | "linear") {
            return Err(invalid(
                "scheduler_config.beta_schedule",
                format!("{:?} is not supported; sdrt knows \"scaled_linear\" and \"linear\"", config.beta_schedule),
            ));
        }
        let schedule = ModelSchedule::from_betas(
            config.beta_start,
            config.beta_end,
            config.num_train_timesteps as usize,
            config.beta_schedule == "scaled_linear",
        )?;
        let prediction = match config.prediction_type {
            PredictionType::Epsilon => Prediction::Epsilon,
            PredictionType::VPrediction => Prediction::V,
            other => {
                return Err(invalid(
                    "scheduler_config.prediction_type",
                    format!("{other:?} is not supported; sdrt samples epsilon and v-prediction models"),
                ));
            }
        };
        Ok(Self { model, schedule, prediction })
    }

    /// The model's discrete noise schedule.
    pub fn schedule(&self) -> &ModelSchedule {
        &self.schedule
    }

    /// The schedule family some schedules (Align Your Steps) depend on.
    pub fn schedule_family(&self) -> ModelFamily {
        if self.model.folder.family == LoadedFamily::Sdxl { ModelFamily::Sdxl } else { ModelFamily::Sd15 }
    }

    /// Encodes every prompt and negative prompt of the batch (A1111's `setup_conds`).
    pub fn encode_prompts(&mut self, spec: &GenerationSpec) -> Result<BatchConditioning> {
        let _span = tracing::info_span!("processing::text_encode", images = spec.batch_size()).entered();
        spec.check()?;
        let steps = spec.schedule_steps();
        let mut conditioner = conditioner_for(self.model, spec.clip_skip, spec.emphasis, &spec.textual_inversions)?;
        let unconds = conditioner.learned_conditioning(&spec.negative_prompts, steps, true)?;
        let conds = conditioner.multicond(&spec.prompts, steps)?;
        let empty = if spec.pad_cond_uncond {
            // A1111 pads with `cond_stage_model_empty_prompt`: the empty prompt encoded as a positive one.
            let mut encoded = conditioner.encode_texts(&[""])?;
            encoded.pop().map(Arc::new)
        } else {
            None
        };
        Ok(BatchConditioning { conds, unconds, encoder_calls: conditioner.encoder_calls(), empty })
    }

    /// img2img's init latents: the VAE posterior mean × scaling factor of `images` (`[B, 3, H, W]` in
    /// [-1, 1]). A1111 samples the posterior from torch's global RNG, which no request controls; the mean
    /// is the reproducible choice.
    pub fn encode_images(&mut self, images: &Tensor) -> Result<Tensor> {
        let _span = tracing::info_span!("processing::vae_encode").entered();
        let encoder =
            self.model.vae_encoder().map_err(|source| Error::Model { stage: "processing::vae_encode", source })?;
        let view = nchw(images, "processing::vae_encode", "image", "[batch, 3, height, width]")?;
        let posterior =
            encoder.encode(view).map_err(|source| Error::Model { stage: "processing::vae_encode", source })?;
        let scale = self.model.folder.vae_scaling_factor;
        Ok(posterior.mean.mapv(|v| v * scale).into_dyn())
    }

    /// Whether the UNet is an inpainting model (9 input channels), which needs image conditioning.
    pub fn is_inpainting_model(&self) -> bool {
        self.model.unet.in_channels() == Some(9)
    }

    /// A 9-channel UNet's image conditioning (A1111 `inpainting_image_conditioning`): `images` `[B, 3, H, W]`
    /// in [-1, 1] masked by `mask` `[H, W]` (1 = repaint; `None`: all, as A1111 without a mask) with
    /// `weight` (its "Conditional mask weight"), VAE-encoded, behind the mask at latent size.
    pub fn inpainting_conditioning(
        &mut self,
        images: &Tensor,
        mask: Option<&ndarray::Array2<f32>>,
        weight: f64,
    ) -> Result<Tensor> {
        let _span = tracing::info_span!("processing::inpainting_conditioning").entered();
        let masked = inpaint::masked_images(images, mask, weight as f32)?;
        let latents = self.encode_images(&masked)?;
        inpaint::concat_mask(&latents, mask)
    }

    /// A 9-channel UNet's conditioning when nothing is masked (A1111 `txt2img_image_conditioning`): a mid-grey
    /// image, all repainted, at `width`×`height` for `batch` images.
    pub fn blank_inpainting_conditioning(&mut self, batch: usize, width: usize, height: usize) -> Result<Tensor> {
        let grey = Tensor::zeros(ndarray::IxDyn(&[batch, 3, height, width]));
        self.inpainting_conditioning(&grey, None, 1.0)
    }

    /// Samples the batch: txt2img from noise, or img2img from `inputs.init_latent` (inpainting when
    /// `inputs.mask` is given).
    pub fn sample(
        &mut self,
        spec: &GenerationSpec,
        conditioning: &BatchConditioning,
        inputs: PassInputs<'_>,
        hooks: Hooks<'_>,
    ) -> Result<SampleOutput> {
        spec.check()?;
        let mut rng = ImageRng::new(NoiseParams { latent_shape: spec.latent_shape(), ..spec.noise.clone() })?;
        let mut noise = rng.first()?;
        if spec.noise_multiplier != 1.0 && inputs.init_latent.is_some() {
            noise.mapv_inplace(|v| (f64::from(v) * spec.noise_multiplier) as f32);
        }
        let is_xl = self.model.unet.takes_sdxl_conditioning();
        let time_ids = is_xl.then(|| unet::sdxl_time_ids(spec.width, spec.height));
        let img2img = match (inputs.init_latent, spec.denoising_strength) {
            (Some(init), Some(strength)) => Some((init, spec.img2img_steps(strength)?)),
            (Some(_), None) => {
                return Err(invalid("denoising_strength", "img2img needs a denoising strength in 0..=1".into()));
            }
            (None, _) => None,
        };
        let schedule_steps = img2img.map_or(spec.steps, |(_, steps)| steps.total);
        // The timestep as `DiscreteDenoiser` computes it from σ, so the comparison is exact.
        let last_timestep = spec.sampler.last_sigma(schedule_steps, &self.schedule)?;
        let last_timestep = last_timestep.map(|sigma| self.schedule.sigma_to_t(sigma) as f32);
        let unet = unet::OnnxUnet::new(&mut self.model.unet, time_ids, conditioning.empty.clone())
            .releasing_memory_at(last_timestep);
        let inner = DiscreteDenoiser::new(unet, self.schedule.clone(), self.prediction);
        let conds = conditioning
            .conds
            .iter()
            .map(|subs| subs.iter().map(|(s, w)| Ok((scheduled(s)?, *w))).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let unconds = conditioning.unconds.iter().map(scheduled).collect::<Result<Vec<_>>>()?;
        let mut denoiser =
            CfgDenoiser::new(inner, conds, unconds, spec.cfg_scale)?.with_pad_cond_uncond(spec.pad_cond_uncond);
        if let Some(image) = inputs.image_conditioning {
            denoiser = denoiser.with_image_conditioning(image.clone())?;
        }
        // The SDE samplers draw their noise from Brownian trees over the whole schedule (A1111
        // `create_noise_sampler`), everything else from the seeds' streams.
        let mut brownian = brownian_noise(spec, schedule_steps, &self.schedule)?;
        let noise_source: &mut dyn crate::sampling::NoiseSource = match &mut brownian {
            Some(brownian) => brownian,
            None => &mut rng,
        };
        let sampler = &spec.sampler;
        let sampled = match (img2img, inputs.mask) {
            (Some((init, steps)), Some(mask)) => {
                let before = sampler.kind().is_timestep_sampler();
                let mut masked = inpaint::MaskedDenoiser::new(&mut denoiser, init, mask, before);
                let mut sampled =
                    sampler.img2img(&self.schedule, &mut masked, noise_source, init, &noise, steps, hooks)?;
                sampled.latent = mask.blend(&sampled.latent, init)?;
                sampled
            }
            (Some((init, steps)), None) => {
                sampler.img2img(&self.schedule, &mut denoiser, noise_source, init, &noise, steps, hooks)?
            }
            (None, _) => sampler.txt2img(&self.schedule, &mut denoiser, noise_source, &noise, spec.steps, hooks)?,
        };
        Ok(SampleOutput { sampled, unet_calls: denoiser.model_calls() })
    }

    /// Decodes latents (as the sampler returns them) to 8-bit RGB images as A1111 does: ÷ scaling factor,
    /// VAE decode, clamp((x + 1)/2)·255, truncated.
    pub fn decode(&mut self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let _span = tracing::info_span!("processing::decode").entered();
        let scale = self.model.folder.vae_scaling_factor;
        let scaled = latents.mapv(|v| v / scale);
        let view = nchw(&scaled, "processing::decode", "latents", "[batch, 4, height/8, width/8]")?;
        let decoded = self
            .model
            .vae_decoder
            .decode(view)
            .map_err(|source| Error::Model { stage: "processing::decode", source })?;
        latents_to_images(&decoded.into_dyn())
    }
}

/// The Brownian-tree noise of an SDE sampler for a schedule of `steps`, over its smallest non-zero and its
/// largest σ, one tree per image seed; `None` for the other samplers.
fn brownian_noise(spec: &GenerationSpec, steps: usize, schedule: &ModelSchedule) -> Result<Option<BrownianNoise>> {
    if !spec.sampler.kind().uses_brownian_noise() {
        return Ok(None);
    }
    let sigmas = spec.sampler.sigmas(steps, schedule)?;
    let sigma_min = sigmas.iter().copied().filter(|s| *s > 0.0).fold(f64::INFINITY, f64::min);
    let sigma_max = sigmas.iter().copied().fold(0.0, f64::max);
    BrownianNoise::new(&spec.noise.seeds, spec.latent_shape(), sigma_min, sigma_max).map(Some)
}

/// `tensor` as a 4-D NCHW view, or a shape error naming the stage, the tensor and what was expected.
pub(crate) fn nchw<'t>(
    tensor: &'t Tensor,
    stage: &'static str,
    name: &'static str,
    expected: &str,
) -> Result<ndarray::ArrayView4<'t, f32>> {
    tensor.view().into_dimensionality::<ndarray::Ix4>().map_err(|_| Error::Shape {
        stage,
        tensor: name,
        found: tensor.shape().to_vec(),
        expected: expected.to_owned(),
    })
}

fn scheduled(schedule: &PromptSchedule) -> Result<ScheduledCond<Arc<crate::conditioning::Cond>>> {
    ScheduledCond::new(schedule.clone())
}

/// The text embedders of the model's family: SD 1.x uses the last layer (or clip skip), SD 2.x's export
/// already ends at the penultimate layer, SDXL concatenates both encoders' penultimate layers.
fn conditioner_for<'m>(
    model: &'m mut LoadedModel,
    clip_skip: u32,
    emphasis: Emphasis,
    inversions: &[TextualInversion],
) -> Result<Conditioner<'m>> {
    let family = model.folder.family;
    let missing = |what: &str| invalid("model", format!("the model folder has no {what}, which prompts need"));
    let tokenizer = model.tokenizer.as_ref().ok_or_else(|| missing("tokenizer/"))?;
    let encoder = model.text_encoder.as_mut().ok_or_else(|| missing("text_encoder/"))?;
    if family == LoadedFamily::Sdxl {
        let tokenizer_2 = model.tokenizer_2.as_ref().ok_or_else(|| missing("tokenizer_2/"))?;
        let encoder_2 = model.text_encoder_2.as_mut().ok_or_else(|| missing("text_encoder_2/"))?;
        let embedders = vec![
            Embedder::new(tokenizer, Box::new(ClipTextEncoder::new(encoder, TextLayer::Penultimate)))
                .with_embeddings(token_embeddings(tokenizer, inversions, 0)?),
            Embedder::new(tokenizer_2, Box::new(ClipTextEncoder::new(encoder_2, TextLayer::Penultimate)))
                .with_embeddings(token_embeddings(tokenizer_2, inversions, 1)?),
        ];
        return Ok(Conditioner::new(embedders, emphasis, true));
    }
    let layer = match (family, clip_skip) {
        (LoadedFamily::Sd1, n) if n > 1 => TextLayer::ClipSkip(n),
        _ => TextLayer::Last,
    };
    let embedder = Embedder::new(tokenizer, Box::new(ClipTextEncoder::new(encoder, layer)))
        .with_embeddings(token_embeddings(tokenizer, inversions, 0)?);
    Ok(Conditioner::new(vec![embedder], emphasis, false))
}

/// The embeddings of text encoder `index`, found in prompts by their names' tokens (A1111's
/// `register_embedding_by_name`).
pub fn token_embeddings(
    tokenizer: &dyn PromptTokenizer,
    inversions: &[TextualInversion],
    index: usize,
) -> Result<Vec<TokenEmbedding>> {
    let with_vectors: Vec<&TextualInversion> = inversions.iter().filter(|ti| ti.vectors.len() > index).collect();
    let names: Vec<&str> = with_vectors.iter().map(|ti| ti.name.as_str()).collect();
    let ids = tokenizer.tokenize(&names)?;
    Ok(with_vectors
        .into_iter()
        .zip(ids)
        .map(|(ti, ids)| TokenEmbedding { name: ti.name.clone(), ids, vectors: Arc::clone(&ti.vectors[index]) })
        .collect())
}
