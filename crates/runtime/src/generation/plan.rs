//! prepare: a request resolved once into a [`JobPlan`]: per-batch specs (seeds, sampler, conditioning
//! texts), the hires pass, fitted init images and the infotext template. Nothing after prepare looks at the
//! request again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sdrt_api_types::{GenerationRequest, MIN_SIDE, SamplerChoice, Txt2ImgRequest};
use sdrt_io::{GenerationParams, HiresParams, ImageUpscaler, InfotextValue, ResizeMode, StyleDatabase};
use sdrt_models::{RgbPixels, SessionConfig, UpscaleModel};
use sdrt_processing::{
    ExtraNetworkCall, GenerationSpec, LATENT_FACTOR, LatentUpscaleMode, ModelFamily, NoiseParams, Pipeline, RgbImage,
    Sampler, SamplerParams, ScheduleOptions, TextualInversion, batch_seeds, fixed_seed, parse_extra_networks,
    tokenize_prompt_with_embeddings,
};

use super::inpaint::{InpaintPlan, PreparedInpaint, prepare_inpaint};
use super::settings::{GenerationSettings, randn_source_name};
use super::{GenerationJob, PreparedGeneration, ProcessingRequest, poisoned};
use crate::lifecycle::JobContext;
use crate::provider::ModelHandle;

/// Everything a job does, resolved from its request.
pub(crate) struct JobPlan {
    /// One spec per batch (`n_iter` of them): the first pass.
    pub(crate) batches: Vec<GenerationSpec>,
    /// txt2img's hires fix, run on every batch after its first pass.
    pub(crate) hires: Option<HiresPlan>,
    /// img2img's init images, fitted to the request's size (inpainting: cropped and filled too).
    pub(crate) init_images: Option<Vec<RgbImage>>,
    /// img2img with a mask.
    pub(crate) inpaint: Option<InpaintPlan>,
    /// The UNet takes image conditioning (9 channels).
    pub(crate) inpainting_model: bool,
    /// The infotext fields every image shares (seeds are filled per image).
    pub(crate) template: GenerationParams,
    /// The settings the job runs with (`override_settings` applied).
    pub(crate) settings: GenerationSettings,
    /// Variation strength (decides whether the infotext names the variation seed).
    pub(crate) subseed_strength: f64,
    /// LoRA networks of the passes when the hires prompt names others than the prompt (A1111 activates each
    /// pass's own at its start); `None` when both passes share the prompt's.
    pub(crate) pass_networks: Option<PassNetworks>,
}

/// The networks of each pass.
pub(crate) struct PassNetworks {
    pub(crate) first: Vec<sdrt_models::AppliedLora>,
    pub(crate) hires: Vec<sdrt_models::AppliedLora>,
}

/// How the first pass's result is enlarged for the hires pass.
pub(crate) enum HiresUpscaler {
    /// Resample the latents (`Latent …`).
    Latent(LatentUpscaleMode),
    /// Decode, enlarge the image, encode again.
    Image(ImageUpscaler),
    /// Decode, enlarge with an upscaler model run in tiles (`tile`, `overlap`), encode again.
    Model { model: Box<Mutex<UpscaleModel>>, tile: u32, overlap: u32 },
}

impl HiresUpscaler {
    /// The upscaler A1111 calls `name` (no name: A1111's default latent mode, "Latent"); a model from the
    /// settings' upscaler folder is loaded here.
    fn resolve(name: Option<&str>, settings: &GenerationSettings, config: &SessionConfig) -> crate::Result<Self> {
        let Some(name) = name else { return Ok(Self::Latent(LatentUpscaleMode::Bilinear)) };
        if let Some(mode) = LatentUpscaleMode::from_label(name) {
            return Ok(Self::Latent(mode));
        }
        if let Some(upscaler) = ImageUpscaler::from_label(name) {
            return Ok(Self::Image(upscaler));
        }
        let models = settings.upscaler_dir.as_deref().map(model_upscalers).unwrap_or_default();
        let Some((_, path)) = models.iter().find(|(model, _)| model == name) else {
            let mut known: Vec<String> = upscaler_names().into_iter().map(str::to_owned).collect();
            known.extend(models.into_iter().map(|(model, _)| model));
            let folder = match &settings.upscaler_dir {
                Some(dir) => format!("no {name}.onnx in {}", dir.display()),
                None => "no upscaler folder is set (--upscaler-dir)".to_owned(),
            };
            return Err(crate::Error::Field {
                field: "hr_upscaler",
                problem: format!("unknown upscaler {name:?} ({folder}); use one of: {}", known.join(", ")),
            });
        };
        let model =
            UpscaleModel::load(path, config).map_err(|source| crate::Error::Model { path: path.clone(), source })?;
        let model = Box::new(Mutex::new(model));
        Ok(Self::Model { model, tile: settings.esrgan_tile, overlap: settings.esrgan_tile_overlap })
    }
}

impl HiresUpscaler {
    /// `images.resize_image(0, image, width, height, upscaler)`: enlarge with this upscaler, then LANCZOS to
    /// the exact size. `field` names the request field in errors.
    pub(crate) fn resize(
        &self,
        image: &image::RgbImage,
        width: u32,
        height: u32,
        field: &'static str,
    ) -> crate::Result<image::RgbImage> {
        match self {
            Self::Image(builtin) => Ok(builtin.resize(image, width, height)),
            Self::Model { model, tile, overlap } => {
                let mut model = model.lock().map_err(|_| poisoned())?;
                let mut run = |piece: &image::RgbImage| run_model(&mut model, piece, field);
                sdrt_io::upscale_with(image, width, height, |current| {
                    sdrt_io::upscale_tiled(current, *tile, *overlap, &mut run)
                })
            }
            Self::Latent(_) => Err(latent_is_not_an_image_upscaler(field)),
        }
    }

    /// `Upscaler.upscale(image, scale)` (A1111's extras): the image enlarged by `scale`, sides rounded down to
    /// multiples of 8.
    pub(crate) fn upscale_by(
        &self,
        image: &image::RgbImage,
        scale: f64,
        field: &'static str,
    ) -> crate::Result<image::RgbImage> {
        match self {
            Self::Image(builtin) => Ok(builtin.upscale(image, scale)),
            Self::Model { model, tile, overlap } => {
                let mut model = model.lock().map_err(|_| poisoned())?;
                let mut run = |piece: &image::RgbImage| run_model(&mut model, piece, field);
                sdrt_io::upscale_by(image, scale, |current| sdrt_io::upscale_tiled(current, *tile, *overlap, &mut run))
            }
            Self::Latent(_) => Err(latent_is_not_an_image_upscaler(field)),
        }
    }
}

fn latent_is_not_an_image_upscaler(field: &'static str) -> crate::Error {
    crate::Error::Field {
        field,
        problem: "a latent upscale mode resizes latents in hires fix, not images; name an image upscaler".into(),
    }
}

/// One tile through an upscaler model.
fn run_model(model: &mut UpscaleModel, tile: &image::RgbImage, field: &'static str) -> crate::Result<image::RgbImage> {
    let pixels = RgbPixels { width: tile.width(), height: tile.height(), pixels: tile.as_raw().clone() };
    let out = model.upscale(&pixels).map_err(|source| crate::Error::Upscaler { source })?;
    image::RgbImage::from_raw(out.width, out.height, out.pixels)
        .ok_or(crate::Error::Field { field, problem: "the upscaler model returned a malformed image".into() })
}

/// A1111's extras tab (`/sdapi/v1/extra-single-image`, `/extra-batch-images`): each of `images` enlarged by
/// the upscaler named `upscaler` (built-in, or a model in `settings.upscaler_dir`, loaded once for all of them)
/// by a scale, or to a size (cropped to it when asked). Returns the images and A1111's "Postprocess …" entries
/// of the last one.
pub fn extras_upscale(
    images: &[RgbImage],
    upscaler: &str,
    target: ExtrasTarget,
    settings: &GenerationSettings,
    config: &SessionConfig,
) -> crate::Result<(Vec<RgbImage>, PostprocessInfo)> {
    let field = "upscaler_1";
    let resolved = HiresUpscaler::resolve(Some(upscaler), settings, config).map_err(|error| match error {
        crate::Error::Field { problem, .. } => crate::Error::Field { field, problem },
        other => other,
    })?;
    let mut info = Vec::new();
    let upscaled = images
        .iter()
        .map(|image| {
            let (upscaled, entries) = extras_upscale_one(&resolved, image, upscaler, target, settings.limits.max_side)?;
            info = entries;
            Ok(upscaled)
        })
        .collect::<crate::Result<Vec<_>>>()?;
    Ok((upscaled, info))
}

fn extras_upscale_one(
    resolved: &HiresUpscaler,
    image: &RgbImage,
    upscaler: &str,
    target: ExtrasTarget,
    max_side: u32,
) -> crate::Result<(RgbImage, PostprocessInfo)> {
    let image = &to_image_buffer(image, "image")?;
    if image.width() == 0 || image.height() == 0 {
        return Err(crate::Error::Field { field: "image", problem: "the image is empty".into() });
    }
    let mut info = Vec::new();
    let scale = match target {
        ExtrasTarget::By(scale) => {
            info.push(("Postprocess upscale by".to_owned(), sdrt_io::python_float(scale)));
            scale
        }
        ExtrasTarget::To { width, height, .. } => {
            info.push(("Postprocess upscale to".to_owned(), format!("{width}x{height}")));
            (f64::from(width) / f64::from(image.width())).max(f64::from(height) / f64::from(image.height()))
        }
    };
    let (max_w, max_h) = (f64::from(image.width()) * scale, f64::from(image.height()) * scale);
    if !(scale.is_finite() && scale > 0.0) || max_w > f64::from(max_side) || max_h > f64::from(max_side) {
        return Err(crate::Error::Field {
            field: "upscaling_resize",
            problem: format!("scaling by {scale} would give {max_w}x{max_h}; each side must stay within {max_side}"),
        });
    }
    let mut upscaled = resolved.upscale_by(image, scale, "upscaler_1")?;
    info.push(("Postprocess upscaler".to_owned(), upscaler.to_owned()));
    if let ExtrasTarget::To { width, height, crop: true } = target {
        let mut cropped = image::RgbImage::new(width, height);
        let x = i64::from(width / 2) - i64::from(upscaled.width() / 2);
        let y = i64::from(height / 2) - i64::from(upscaled.height() / 2);
        image::imageops::replace(&mut cropped, &upscaled, x, y);
        upscaled = cropped;
        info.push(("Postprocess crop to".to_owned(), format!("{width}x{height}")));
    }
    let (width, height) = upscaled.dimensions();
    Ok((RgbImage { width, height, pixels: upscaled.into_raw() }, info))
}

/// A1111's "Postprocess …" entries, in order.
pub type PostprocessInfo = Vec<(String, String)>;

/// How far the extras tab enlarges an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExtrasTarget {
    /// By a factor (`resize_mode` 0, `upscaling_resize`).
    By(f64),
    /// To a size (`resize_mode` 1), centre-cropped to it when `crop` (`upscaling_crop`).
    To {
        /// `upscaling_resize_w`.
        width: u32,
        /// `upscaling_resize_h`.
        height: u32,
        /// `upscaling_crop`.
        crop: bool,
    },
}

/// The upscaler models in `dir`: every `<name>.onnx`, by name.
pub fn model_upscalers(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut models: Vec<(String, PathBuf)> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "onnx") && path.is_file())
        .filter_map(|path| Some((path.file_stem()?.to_str()?.to_owned(), path)))
        .collect();
    models.sort();
    models
}

/// Every `hr_upscaler` name sdrt runs: the latent modes, then the image upscalers.
pub fn upscaler_names() -> Vec<&'static str> {
    latent_upscale_mode_names().into_iter().chain(image_upscaler_names()).collect()
}

/// The latent upscale modes (`/sdapi/v1/latent-upscale-modes`).
pub fn latent_upscale_mode_names() -> Vec<&'static str> {
    LatentUpscaleMode::ALL.into_iter().map(LatentUpscaleMode::label).collect()
}

/// The image upscalers (`/sdapi/v1/upscalers`).
pub fn image_upscaler_names() -> Vec<&'static str> {
    ImageUpscaler::ALL.into_iter().map(ImageUpscaler::label).collect()
}

/// txt2img's second pass (A1111 `StableDiffusionProcessingTxt2Img.sample_hr_pass`).
pub(crate) struct HiresPlan {
    pub(crate) upscaler: HiresUpscaler,
    /// The size the first pass is enlarged to (`hr_upscale_to_x/y`).
    pub(crate) upscale_to: (usize, usize),
    /// Latent rows/columns cut from the enlarged result when `hr_resize_x/y` change the aspect ratio.
    pub(crate) truncate: (usize, usize),
    sampler: Sampler,
    steps: usize,
    denoising_strength: f64,
    prompt: String,
    negative_prompt: String,
}

impl HiresPlan {
    /// The second pass's spec for a batch whose first pass was `first`, on enlarged latents of `latent_size`
    /// (rows, columns): same seeds, the hires sampler, steps and prompts, and prompt timelines continuing
    /// after the first pass.
    pub(crate) fn spec(&self, first: &GenerationSpec, (rows, columns): (usize, usize)) -> GenerationSpec {
        let images = first.batch_size();
        GenerationSpec {
            prompts: vec![self.prompt.clone(); images],
            negative_prompts: vec![self.negative_prompt.clone(); images],
            steps: self.steps,
            width: columns * LATENT_FACTOR,
            height: rows * LATENT_FACTOR,
            sampler: self.sampler.clone(),
            denoising_strength: Some(self.denoising_strength),
            after_first_pass: Some(first.schedule_steps().base),
            ..first.clone()
        }
    }
}

pub(crate) fn prepare(job: GenerationJob, context: &mut JobContext) -> crate::Result<PreparedGeneration> {
    let GenerationJob { mut request, mut settings, provider } = job;
    apply_styles(&mut request, &settings.styles);
    let base = request.base().clone();
    let sampling = match &request {
        ProcessingRequest::Txt2Img(r) => r.validate(&settings.limits)?,
        ProcessingRequest::Img2Img { request, .. } => request.validate(&settings.limits)?,
    };
    reject_unimplemented(&request)?;
    apply_override_settings(&mut settings, &base)?;
    let started = Instant::now();
    let model_name = settings.model.clone().or_else(|| provider.current().map(|p| p.display().to_string()));
    let model_name = model_name.ok_or(crate::Error::UnknownModel {
        name: String::new(),
        known: provider.registered().keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let handle = provider.get(&model_name)?;
    context.metrics.record("load_model", started.elapsed());

    let choice = sampling.first_pass;
    let vae_infotext;
    let (inversions, ti_hashes);
    // A1111's `parse_extra_network_prompts`: the tags leave the text the encoder sees (the infotext keeps
    // them), and the networks they name are merged before anything is encoded.
    let (prompt, calls) = parse_extra_networks(&base.prompt);
    let mut networks = settings.loras.resolve(&calls)?;
    let hires_networks = match hires_calls(&request, &calls) {
        Some(hires_calls) => {
            let hires = settings.loras.resolve(&hires_calls)?;
            // A1111 adds the hires pass's hashes to the first pass's.
            for (name, hash) in &hires.hashes {
                if !networks.hashes.iter().any(|(known, _)| known == name) {
                    networks.hashes.push((name.clone(), hash.clone()));
                }
            }
            networks.warnings.extend(hires.warnings);
            Some(hires.applied)
        }
        None => None,
    };
    let (family, inpainting_model) = {
        let mut model = handle.model.lock().map_err(|_| poisoned())?;
        let skipped = model
            .apply_networks(&networks.applied)
            .map_err(|source| crate::Error::Model { path: handle.path.clone(), source })?;
        let (vae, vae_warning) = settings.vaes.resolve(&settings.sd_vae, &handle.path);
        model
            .apply_vae(vae.as_ref().map(|entry| entry.path.as_path()))
            .map_err(|source| crate::Error::Model { path: handle.path.clone(), source })?;
        for problem in networks.warnings.iter().chain(&skipped).chain(&vae_warning) {
            tracing::warn!("{problem}");
        }
        vae_infotext = vae.map(|entry| entry.name).zip(model.vae_file().map(sdrt_io::model_hash));
        (inversions, ti_hashes) = textual_inversions(&model, &settings, &prompt, &base.negative_prompt)?;
        let pipeline = Pipeline::new(&mut model)?;
        (pipeline.schedule_family(), pipeline.is_inpainting_model())
    };
    let sampler = build_sampler(&choice, &base, family)?;
    let hires = match (&request, sampling.hires_pass) {
        (ProcessingRequest::Txt2Img(r), Some(hires_choice)) if r.enable_hr => {
            let plan =
                hires_plan(r, &build_sampler(&hires_choice, &base, family)?, &settings, provider.session_config())?;
            Some((plan, hires_infotext(r, &choice, &hires_choice)))
        }
        _ => None,
    };
    let denoising_strength = match &request {
        ProcessingRequest::Txt2Img(r) => r.enable_hr.then_some(r.denoising_strength),
        ProcessingRequest::Img2Img { request, .. } => Some(request.denoising_strength),
    };
    let first_pass_strength = denoising_strength.filter(|_| matches!(request, ProcessingRequest::Img2Img { .. }));
    let noise_multiplier = match &request {
        ProcessingRequest::Img2Img { request, .. } => request.initial_noise_multiplier.unwrap_or(1.0),
        ProcessingRequest::Txt2Img(_) => 1.0,
    };
    let batches = batch_specs(&base, &prompt, &inversions, &settings, &sampler, first_pass_strength, noise_multiplier)?;
    check_runnable(&batches[0], "steps")?;
    if let Some((hires, _)) = &hires {
        let (w, h) = hires.upscale_to;
        check_runnable(&hires.spec(&batches[0], (h / LATENT_FACTOR, w / LATENT_FACTOR)), "hr_second_pass_steps")?;
    }
    let mut extra = Vec::new();
    let (init_images, inpaint) = match &request {
        ProcessingRequest::Txt2Img(_) => (None, None),
        ProcessingRequest::Img2Img { request, init_images, mask } => {
            match mask.as_ref().map(|mask| prepare_inpaint(request, init_images, mask)).transpose()?.flatten() {
                Some(PreparedInpaint { images, plan, infotext }) => {
                    extra = infotext;
                    (Some(images), Some(plan))
                }
                None => (Some(fit_init_images(init_images, base.width, base.height, request.resize_mode)?), None),
            }
        }
    };
    if !networks.hashes.is_empty() {
        let hashes: Vec<String> = networks.hashes.iter().map(|(name, hash)| format!("{name}: {hash}")).collect();
        extra.push(("Lora hashes".to_owned(), InfotextValue::Text(hashes.join(", "))));
    }
    if !ti_hashes.is_empty() {
        extra.push(("TI hashes".to_owned(), InfotextValue::Text(ti_hashes.join(", "))));
    }
    if noise_multiplier != 1.0 {
        extra.push(("Noise multiplier".to_owned(), InfotextValue::Float(noise_multiplier)));
    }
    // A1111 marks `is_using_inpainting_conditioning` for SD 1.x/2.x inpainting UNets always, for SDXL ones only
    // in img2img.
    let is_img2img = matches!(request, ProcessingRequest::Img2Img { .. });
    let conditional_mask_weight =
        (inpainting_model && (is_img2img || family != ModelFamily::Sdxl)).then_some(settings.inpainting_mask_weight);
    let (hires, hires_infotext) = hires.unzip();
    let (vae, vae_hash) = match vae_infotext {
        Some((name, hash)) => {
            let hash = hash.map_err(|source| crate::Error::Io { path: handle.path.clone(), source })?;
            (Some(name), Some(hash))
        }
        None => (None, None),
    };
    let template = GenerationParams {
        vae,
        vae_hash,
        hires: hires_infotext,
        conditional_mask_weight,
        extra,
        ..infotext_template(&base, &choice, &settings, &handle, denoising_strength)
    };
    let plan = JobPlan {
        batches,
        hires,
        init_images,
        inpaint,
        inpainting_model,
        template,
        settings,
        subseed_strength: base.subseed_strength,
        pass_networks: hires_networks.map(|hires| PassNetworks { first: networks.applied.clone(), hires }),
    };
    Ok(PreparedGeneration { handle, plan })
}

/// A pass the sampler cannot run (too few timesteps for DDIM, PLMS, UniPC) is a bad request, named by `field`.
fn check_runnable(spec: &GenerationSpec, field: &'static str) -> crate::Result<()> {
    let img2img = spec.denoising_strength.map(|strength| spec.img2img_steps(strength)).transpose()?;
    spec.sampler.check_runnable(spec.steps, img2img).map_err(|e| crate::Error::Field { field, problem: e.to_string() })
}

/// A1111's `setup_prompts`: the named styles merged into every prompt (hires prompts too; an empty hires prompt
/// follows the styled prompt), before anything reads them. The infotext shows the styled prompts.
fn apply_styles(request: &mut ProcessingRequest, styles: &StyleDatabase) {
    let names = request.base().styles.clone().unwrap_or_default();
    if names.is_empty() {
        return;
    }
    for unknown in names.iter().filter(|name| styles.get(name).is_none()) {
        // A1111 applies an unknown style as an empty one and goes on.
        tracing::warn!(style = %unknown, "no style of this name in the styles file; it adds nothing");
    }
    let base = request.base_mut();
    base.prompt = styles.apply(&base.prompt, &names);
    base.negative_prompt = styles.apply_negative(&base.negative_prompt, &names);
    if let ProcessingRequest::Txt2Img(txt2img) = request {
        if !txt2img.hr_prompt.is_empty() {
            txt2img.hr_prompt = styles.apply(&txt2img.hr_prompt, &names);
        }
        if !txt2img.hr_negative_prompt.is_empty() {
            txt2img.hr_negative_prompt = styles.apply_negative(&txt2img.hr_negative_prompt, &names);
        }
    }
}

/// The embeddings that fit the model's text encoders (only encoders built from checkpoints take them), and A1111's
/// `TI hashes` entries (`name: hash`) of those the prompt, then the negative prompt, name.
fn textual_inversions(
    model: &sdrt_models::LoadedModel,
    settings: &GenerationSettings,
    prompt: &str,
    negative_prompt: &str,
) -> crate::Result<(Arc<Vec<TextualInversion>>, Vec<String>)> {
    let encoders: Vec<&sdrt_models::TextEncoder> =
        [model.text_encoder.as_ref(), model.text_encoder_2.as_ref()].into_iter().flatten().collect();
    let (Some(tokenizer), true) = (model.tokenizer.as_ref(), encoders.iter().all(|e| e.supports_embeddings())) else {
        return Ok((Arc::default(), Vec::new()));
    };
    let widths: Vec<usize> = encoders.iter().filter_map(|e| e.embedding_width()).collect();
    let (inversions, skipped) = settings.embeddings.for_model(&widths);
    if !skipped.is_empty() {
        tracing::debug!("embeddings skipped (another model's width): {}", skipped.join(", "));
    }
    let embeddings = sdrt_processing::token_embeddings(tokenizer, &inversions, 0)?;
    let mut hashes = Vec::new();
    for text in [prompt, negative_prompt] {
        let tokenized = tokenize_prompt_with_embeddings(tokenizer, text, settings.emphasis, &embeddings)?;
        let mut used: Vec<&str> = Vec::new();
        for (_, index) in tokenized.chunks.iter().flat_map(|chunk| &chunk.fixes) {
            let name = embeddings[*index].name.as_str();
            if !used.contains(&name) {
                used.push(name);
            }
        }
        for name in used {
            let key: String = name.chars().filter(|c| !matches!(c, ':' | ',')).collect();
            hashes.push(format!("{key}: {}", settings.embeddings.short_hash(name).unwrap_or_default()));
        }
    }
    Ok((Arc::new(inversions), hashes))
}

/// The hires prompt's own tags when they differ from the prompt's (A1111 parses them on their own and activates
/// them for the second pass; an empty hires prompt is the prompt).
fn hires_calls(request: &ProcessingRequest, first_pass: &[ExtraNetworkCall]) -> Option<Vec<ExtraNetworkCall>> {
    let ProcessingRequest::Txt2Img(txt2img) = request else { return None };
    if !txt2img.enable_hr || txt2img.hr_prompt.is_empty() {
        return None;
    }
    let calls = parse_extra_networks(&txt2img.hr_prompt).1;
    (calls != first_pass).then_some(calls)
}

fn apply_override_settings(settings: &mut GenerationSettings, base: &GenerationRequest) -> crate::Result<()> {
    settings
        .apply_settings(&base.override_settings)
        .map(drop)
        .map_err(|p| crate::Error::Setting { field: format!("override_settings.{}", p.key), problem: p.problem })
}

/// Fields asking for features sdrt does not have yet are refused, so no request is answered with an image
/// that silently ignored part of it. Values that change nothing (`false`, empty, "None") pass, since clients
/// often send every field.
fn reject_unimplemented(request: &ProcessingRequest) -> crate::Result<()> {
    let unsupported = |field: &'static str, feature: &'static str| crate::Error::Unsupported { field, feature };
    let base = request.base();
    let named = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty() && v != "None");
    if base.restore_faces == Some(true) {
        return Err(unsupported("restore_faces", "face restoration"));
    }
    if base.tiling == Some(true) {
        return Err(unsupported("tiling", "tiling"));
    }
    if named(&base.refiner_checkpoint) {
        return Err(unsupported("refiner_checkpoint", "the refiner"));
    }
    if named(&base.script_name) {
        return Err(unsupported("script_name", "scripts"));
    }
    if !base.alwayson_scripts.is_empty() {
        return Err(unsupported("alwayson_scripts", "always-on scripts (extensions)"));
    }
    if base.s_min_uncond.is_some_and(|v| v > 0.0) {
        return Err(unsupported("s_min_uncond", "skipping the negative prompt at low σ"));
    }
    match request {
        ProcessingRequest::Txt2Img(r) => {
            let other_checkpoint =
                named(&r.hr_checkpoint_name) && r.hr_checkpoint_name.as_deref() != Some("Use same checkpoint");
            if r.enable_hr && other_checkpoint {
                Err(unsupported("hr_checkpoint_name", "a second checkpoint for the hires pass"))
            } else {
                Ok(())
            }
        }
        ProcessingRequest::Img2Img { request: r, mask, .. } => {
            if r.latent_mask.as_deref().is_some_and(|m| !m.is_empty()) {
                Err(unsupported("latent_mask", "a separate latent mask"))
            } else if r.mask.as_deref().is_some_and(|m| !m.is_empty()) && mask.is_none() {
                Err(crate::Error::Field {
                    field: "mask",
                    problem: "the request names a mask but none was decoded; send it as a base64 image".into(),
                })
            } else {
                Ok(())
            }
        }
    }
}

fn build_sampler(choice: &SamplerChoice, base: &GenerationRequest, family: ModelFamily) -> crate::Result<Sampler> {
    let defaults = SamplerParams::default();
    let params = SamplerParams {
        eta: base.eta,
        s_churn: base.s_churn.unwrap_or(defaults.s_churn),
        s_tmin: base.s_tmin.unwrap_or(defaults.s_tmin),
        s_tmax: base.s_tmax.unwrap_or(defaults.s_tmax),
        s_noise: base.s_noise.unwrap_or(defaults.s_noise),
        ..defaults
    };
    let sampler = Sampler::from_names(choice.sampler.name, Some(choice.scheduler.name), params)?;
    Ok(sampler.with_options(ScheduleOptions { family, ..ScheduleOptions::default() }))
}

/// A1111's `calculate_target_resolution`: the enlarged size from `hr_scale`, or from `hr_resize_x/y` (one
/// side keeps the aspect ratio; both sides cover the box, and the excess is truncated in latent space).
fn hires_plan(
    request: &Txt2ImgRequest,
    sampler: &Sampler,
    settings: &GenerationSettings,
    config: &SessionConfig,
) -> crate::Result<HiresPlan> {
    let base = &request.base;
    let (resize_x, resize_y) = (request.hr_resize_x as usize, request.hr_resize_y as usize);
    let (to_x, to_y) = request.hires_size();
    let upscale_to = (usize::try_from(to_x).unwrap_or(usize::MAX), usize::try_from(to_y).unwrap_or(usize::MAX));
    // Both sides given: the enlarged image covers the box and the excess is cut off in latent space.
    let truncate = match (resize_x, resize_y) {
        (0, _) | (_, 0) => (0, 0),
        (x, y) => (upscale_to.0.saturating_sub(x) / LATENT_FACTOR, upscale_to.1.saturating_sub(y) / LATENT_FACTOR),
    };
    let (min, max) = (MIN_SIDE as usize, settings.limits.max_side as usize);
    if upscale_to.0 < min || upscale_to.1 < min || upscale_to.0 > max || upscale_to.1 > max {
        let field = if resize_x == 0 && resize_y == 0 { "hr_scale" } else { "hr_resize_x" };
        return Err(crate::Error::Field {
            field,
            problem: format!(
                "the hires pass would be {}x{}; each side must be within [{min}, {max}]",
                upscale_to.0, upscale_to.1
            ),
        });
    }
    let prompt = if request.hr_prompt.is_empty() { &base.prompt } else { &request.hr_prompt };
    let (prompt, _) = parse_extra_networks(prompt);
    let prompt = &prompt;
    let negative =
        if request.hr_negative_prompt.is_empty() { &base.negative_prompt } else { &request.hr_negative_prompt };
    Ok(HiresPlan {
        upscaler: HiresUpscaler::resolve(request.hr_upscaler.as_deref().filter(|n| !n.is_empty()), settings, config)?,
        upscale_to,
        truncate,
        sampler: sampler.clone(),
        steps: if request.hr_second_pass_steps == 0 { base.steps } else { request.hr_second_pass_steps } as usize,
        denoising_strength: request.denoising_strength,
        prompt: prompt.clone(),
        negative_prompt: negative.clone(),
    })
}

/// The hires keys A1111 adds to `extra_generation_params` (`init`, `calculate_target_resolution`, and the
/// sampler's `get_sigmas` for "Hires schedule type").
fn hires_infotext(request: &Txt2ImgRequest, first: &SamplerChoice, hires: &SamplerChoice) -> HiresParams {
    let explicit_size = request.hr_resize_x != 0 || request.hr_resize_y != 0;
    let hires_sampler = request.hr_sampler_name.as_deref().filter(|s| !s.is_empty() && *s != "Use same sampler");
    let differs = |hr: &str, first: &str| (!hr.is_empty() && hr != first).then(|| hr.to_owned());
    // "Schedule type" is recorded only for a pass with a schedule function; the hires one only when it
    // differs from the first pass's.
    let first_schedule = first.effective_scheduler().map(|s| s.label);
    let hires_schedule = hires.effective_scheduler().map(|s| s.label).filter(|label| Some(*label) != first_schedule);
    HiresParams {
        checkpoint: None,
        sampler: hires_sampler.filter(|s| *s != request.base.requested_sampler()).map(str::to_owned),
        prompt: differs(&request.hr_prompt, &request.base.prompt),
        negative_prompt: differs(&request.hr_negative_prompt, &request.base.negative_prompt),
        schedule_type: hires_schedule.map(str::to_owned),
        upscale: (!explicit_size).then_some(InfotextValue::Float(request.hr_scale)),
        resize: explicit_size.then_some((request.hr_resize_x, request.hr_resize_y)),
        steps: (request.hr_second_pass_steps != 0).then_some(request.hr_second_pass_steps),
        upscaler: request.hr_upscaler.clone().filter(|n| !n.is_empty()),
    }
}

fn batch_specs(
    base: &GenerationRequest,
    prompt: &str,
    inversions: &Arc<Vec<TextualInversion>>,
    settings: &GenerationSettings,
    sampler: &Sampler,
    denoising_strength: Option<f64>,
    noise_multiplier: f64,
) -> crate::Result<Vec<GenerationSpec>> {
    let seed = fixed_seed(base.seed, "seed")?;
    let subseed = fixed_seed(base.subseed, "subseed")?;
    let batch = base.batch_size as usize;
    let strength = base.subseed_strength as f32;
    (0..base.n_iter as usize)
        .map(|iteration| {
            let (seeds, subseeds) = batch_seeds(seed, subseed, strength, iteration * batch, batch)?;
            Ok(GenerationSpec {
                prompts: vec![prompt.to_owned(); batch],
                negative_prompts: vec![base.negative_prompt.clone(); batch],
                steps: base.steps as usize,
                cfg_scale: base.cfg_scale,
                width: base.width as usize,
                height: base.height as usize,
                sampler: sampler.clone(),
                noise: NoiseParams {
                    latent_shape: [0, 0, 0],
                    seeds,
                    subseeds,
                    subseed_strength: strength,
                    seed_resize_from: (base.seed_resize_from_h, base.seed_resize_from_w),
                    source: settings.randn_source,
                    eta_noise_seed_delta: settings.eta_noise_seed_delta,
                },
                clip_skip: settings.clip_skip,
                emphasis: settings.emphasis,
                denoising_strength,
                pad_cond_uncond: settings.pad_cond_uncond,
                after_first_pass: None,
                noise_multiplier,
                textual_inversions: Arc::clone(inversions),
            })
        })
        .collect()
}

fn fit_init_images(images: &[RgbImage], width: u32, height: u32, resize_mode: u32) -> crate::Result<Vec<RgbImage>> {
    let mode = ResizeMode::from_a1111(resize_mode).map_err(|source| crate::Error::InitImage { source })?;
    images
        .iter()
        .map(|image| {
            let buffer = to_image_buffer(image, "init_images")?;
            let fitted = sdrt_io::resize_image(&buffer, width, height, mode)
                .map_err(|source| crate::Error::InitImage { source })?;
            Ok(RgbImage { width, height, pixels: fitted.into_raw() })
        })
        .collect()
}

/// An `image` crate buffer of `image`, or an error naming `field` when its bytes do not fill it.
pub(crate) fn to_image_buffer(image: &RgbImage, field: &'static str) -> crate::Result<image::RgbImage> {
    image::RgbImage::from_raw(image.width, image.height, image.pixels.clone()).ok_or_else(|| crate::Error::Field {
        field,
        problem: format!("{}×{} RGB needs {} bytes", image.width, image.height, image.width * image.height * 3),
    })
}

/// The infotext fields shared by every image of the job (seeds are filled per image).
fn infotext_template(
    base: &GenerationRequest,
    choice: &SamplerChoice,
    settings: &GenerationSettings,
    handle: &ModelHandle,
    denoising_strength: Option<f64>,
) -> GenerationParams {
    // A1111 records the resolved schedule when the sampler has a default one (DPM++ 2M → Karras),
    // otherwise the request's scheduler (Automatic for Euler).
    let schedule_type = choice.effective_scheduler().unwrap_or(choice.scheduler).label;
    let uses_ensd = settings.eta_noise_seed_delta != 0 && choice.sampler.uses_ensd && base.eta != Some(0.0);
    let resized = base.seed_resize_from_w > 0 && base.seed_resize_from_h > 0;
    GenerationParams {
        prompt: base.prompt.clone(),
        negative_prompt: base.negative_prompt.clone(),
        steps: base.steps,
        sampler: choice.sampler.name.to_owned(),
        schedule_type: Some(schedule_type.to_owned()),
        cfg_scale: InfotextValue::Float(base.cfg_scale),
        width: base.width,
        height: base.height,
        model_hash: Some(handle.hash.clone()),
        model: Some(handle.name.clone()),
        variation_seed_strength: (base.subseed_strength != 0.0).then_some(base.subseed_strength),
        seed_resize_from: resized.then_some((base.seed_resize_from_w as u32, base.seed_resize_from_h as u32)),
        denoising_strength,
        clip_skip: settings.clip_skip,
        ensd: uses_ensd.then_some(settings.eta_noise_seed_delta as i64),
        rng: randn_source_name(settings.randn_source).to_owned(),
        version: Some(settings.version.clone()),
        ..GenerationParams::default()
    }
}
