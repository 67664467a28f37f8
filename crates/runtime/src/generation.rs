//! txt2img and img2img as runner jobs: prepare (validate, resolve names and seeds, get the model, fit init
//! images) → execute (per batch: text encode, image encode, sample, decode) → finalize (infotexts, files).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sdrt_api_types::{GenerationRequest, Img2ImgRequest, SamplerChoice, Txt2ImgRequest};
use sdrt_io::{GenerationParams, InfotextValue, NameParams, ResizeMode};
use sdrt_processing::{
    BatchConditioning, CpuKernel, Emphasis, GenerationSpec, Hooks, NoiseParams, Pipeline, RandomSource, RgbImage,
    Sampler, SamplerParams, ScheduleOptions, StepEvent, Tensor, batch_seeds, fixed_seed, images_to_tensor,
};
use serde_json::{Map, Value};

use crate::lifecycle::{JobContext, ProcessingJob};
use crate::progress::{ProgressEvent, eta};
use crate::provider::{ModelHandle, ModelProvider};

/// The A1111 settings (not request fields) a generation depends on; requests may override them through
/// `override_settings` (`randn_source`, `CLIP_stop_at_last_layers`, `eta_noise_seed_delta`, `emphasis`).
#[derive(Debug, Clone)]
pub struct GenerationSettings {
    /// Model name or folder; `None` = the provider's resident model.
    pub model: Option<String>,
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
    /// Where images are saved; `None` keeps them in memory only.
    pub outdir: Option<PathBuf>,
    /// A1111 file name pattern (`None` = `[seed]-[prompt_spaces]` after the number).
    pub filename_pattern: Option<String>,
    /// Also save each image's final latents as a float32 `.npy` beside it.
    pub save_latents: bool,
    /// The `Version` infotext value.
    pub version: String,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self {
            model: None,
            randn_source: RandomSource::Gpu,
            clip_skip: 1,
            eta_noise_seed_delta: 0,
            emphasis: Emphasis::Original,
            pad_cond_uncond: false,
            outdir: None,
            filename_pattern: None,
            save_latents: false,
            version: format!("sdrt-{}", env!("CARGO_PKG_VERSION")),
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

/// What to generate.
#[derive(Debug, Clone)]
pub enum ProcessingRequest {
    /// Text to image.
    Txt2Img(Txt2ImgRequest),
    /// Image to image; `init_images` are already decoded (the request's base64 strings are not read).
    Img2Img {
        /// The request.
        request: Img2ImgRequest,
        /// Decoded init images; one is used for the whole batch, several are used one per image.
        init_images: Vec<RgbImage>,
    },
}

impl ProcessingRequest {
    fn base(&self) -> &GenerationRequest {
        match self {
            Self::Txt2Img(r) => &r.base,
            Self::Img2Img { request, .. } => &request.base,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Txt2Img(_) => "txt2img",
            Self::Img2Img { .. } => "img2img",
        }
    }
}

/// One generated image with everything known about it.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// The pixels.
    pub image: RgbImage,
    /// Its seed.
    pub seed: u64,
    /// Its variation seed.
    pub subseed: u64,
    /// The exact A1111 infotext.
    pub infotext: String,
    /// Final latents `[4, h, w]` as the sampler returned them (before ÷ the VAE scaling factor).
    pub latents: Tensor,
    /// Where the PNG was saved.
    pub path: Option<PathBuf>,
    /// Where the latents were saved.
    pub latents_path: Option<PathBuf>,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// The images, in batch order.
    pub images: Vec<GeneratedImage>,
    /// The job stopped early (the last batch holds the last denoised prediction).
    pub interrupted: bool,
    /// UNet forward calls made.
    pub unet_calls: usize,
    /// Text-encoder calls made.
    pub encoder_calls: usize,
    /// Model name (the folder's).
    pub model_name: String,
    /// Model hash.
    pub model_hash: String,
}

/// A txt2img or img2img job for [`crate::ProcessingRunner`].
pub struct GenerationJob {
    request: ProcessingRequest,
    settings: GenerationSettings,
    provider: Arc<ModelProvider>,
}

impl GenerationJob {
    /// A job generating `request` with `settings`, taking its model from `provider`.
    pub fn new(request: ProcessingRequest, settings: GenerationSettings, provider: Arc<ModelProvider>) -> Self {
        Self { request, settings, provider }
    }
}

/// What prepare resolved.
pub struct PreparedGeneration {
    handle: ModelHandle,
    specs: Vec<GenerationSpec>,
    init_images: Option<Vec<RgbImage>>,
    template: GenerationParams,
    settings: GenerationSettings,
    subseed_strength: f64,
}

struct BatchResult {
    spec: GenerationSpec,
    images: Vec<RgbImage>,
    latents: Tensor,
}

/// What execute produced.
pub struct ExecutedGeneration {
    prepared: PreparedGeneration,
    batches: Vec<BatchResult>,
    interrupted: bool,
    unet_calls: usize,
    encoder_calls: usize,
}

impl ProcessingJob for GenerationJob {
    type Prepared = PreparedGeneration;
    type Executed = ExecutedGeneration;
    type Output = GenerationOutput;

    fn kind(&self) -> &'static str {
        self.request.kind()
    }

    fn prepare(self, context: &mut JobContext) -> Result<PreparedGeneration, String> {
        prepare(self, context).map_err(|e| e.to_string())
    }

    fn execute(prepared: PreparedGeneration, context: &mut JobContext) -> Result<ExecutedGeneration, String> {
        execute(prepared, context).map_err(|e| e.to_string())
    }

    fn finalize(executed: ExecutedGeneration, context: &mut JobContext) -> Result<GenerationOutput, String> {
        finalize(executed, context).map_err(|e| e.to_string())
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
    /// `sd_model_checkpoint`. Returns the names it does not implement (they change nothing, as unknown
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
    if base.styles.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("styles", "prompt styles"));
    }
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
        ProcessingRequest::Txt2Img(r) if r.enable_hr => Err(unsupported("enable_hr", "hires fix")),
        ProcessingRequest::Img2Img { request: r, .. } => {
            if r.mask.as_deref().is_some_and(|m| !m.is_empty()) {
                Err(unsupported("mask", "inpainting"))
            } else if r.latent_mask.as_deref().is_some_and(|m| !m.is_empty()) {
                Err(unsupported("latent_mask", "inpainting"))
            } else if r.image_cfg_scale.is_some() {
                Err(unsupported("image_cfg_scale", "instruct-pix2pix image guidance"))
            } else if r.initial_noise_multiplier.is_some_and(|m| m != 1.0) {
                Err(unsupported("initial_noise_multiplier", "scaling the initial noise"))
            } else {
                Ok(())
            }
        }
        ProcessingRequest::Txt2Img(_) => Ok(()),
    }
}

fn prepare(job: GenerationJob, context: &mut JobContext) -> crate::Result<PreparedGeneration> {
    let GenerationJob { request, mut settings, provider } = job;
    let base = request.base().clone();
    let sampling = match &request {
        ProcessingRequest::Txt2Img(r) => r.validate()?,
        ProcessingRequest::Img2Img { request, .. } => request.validate()?,
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
    let family = {
        let mut model = handle.model.lock().map_err(|_| poisoned())?;
        Pipeline::new(&mut model)?.schedule_family()
    };
    let sampler = build_sampler(&choice, &base, family)?;
    let denoising_strength = match &request {
        ProcessingRequest::Txt2Img(_) => None,
        ProcessingRequest::Img2Img { request, .. } => Some(request.denoising_strength),
    };
    let specs = batch_specs(&base, &settings, &sampler, denoising_strength)?;
    let init_images = match &request {
        ProcessingRequest::Txt2Img(_) => None,
        ProcessingRequest::Img2Img { request, init_images } => {
            Some(fit_init_images(init_images, base.width, base.height, request.resize_mode)?)
        }
    };
    let template = infotext_template(&base, &choice, &settings, &handle, denoising_strength);
    Ok(PreparedGeneration { handle, specs, init_images, template, settings, subseed_strength: base.subseed_strength })
}

fn poisoned() -> crate::Error {
    crate::Error::Processing(sdrt_processing::Error::InvalidParameter {
        field: "model",
        problem: "an earlier job panicked while using this model; load it again".into(),
    })
}

fn build_sampler(
    choice: &SamplerChoice,
    base: &GenerationRequest,
    family: sdrt_processing::ModelFamily,
) -> crate::Result<Sampler> {
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

fn batch_specs(
    base: &GenerationRequest,
    settings: &GenerationSettings,
    sampler: &Sampler,
    denoising_strength: Option<f64>,
) -> crate::Result<Vec<GenerationSpec>> {
    let seed = fixed_seed(base.seed, "seed")?;
    let subseed = fixed_seed(base.subseed, "subseed")?;
    let batch = base.batch_size as usize;
    let strength = base.subseed_strength as f32;
    (0..base.n_iter as usize)
        .map(|iteration| {
            let (seeds, subseeds) = batch_seeds(seed, subseed, strength, iteration * batch, batch)?;
            Ok(GenerationSpec {
                prompts: vec![base.prompt.clone(); batch],
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
            })
        })
        .collect()
}

fn fit_init_images(images: &[RgbImage], width: u32, height: u32, resize_mode: u32) -> crate::Result<Vec<RgbImage>> {
    let mode = ResizeMode::from_a1111(resize_mode).map_err(|source| crate::Error::InitImage { source })?;
    images
        .iter()
        .map(|image| {
            let buffer =
                image::RgbImage::from_raw(image.width, image.height, image.pixels.clone()).ok_or_else(|| {
                    crate::Error::Processing(sdrt_processing::Error::InvalidParameter {
                        field: "init_images",
                        problem: format!(
                            "{}×{} RGB needs {} bytes",
                            image.width,
                            image.height,
                            image.width * image.height * 3
                        ),
                    })
                })?;
            let fitted = sdrt_io::resize_image(&buffer, width, height, mode)
                .map_err(|source| crate::Error::InitImage { source })?;
            Ok(RgbImage { width, height, pixels: fitted.into_raw() })
        })
        .collect()
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

fn execute(prepared: PreparedGeneration, context: &mut JobContext) -> crate::Result<ExecutedGeneration> {
    let model = prepared.handle.model.clone();
    let mut model = model.lock().map_err(|_| poisoned())?;
    let mut pipeline = Pipeline::new(&mut model)?;
    let mut batches = Vec::with_capacity(prepared.specs.len());
    let (mut interrupted, mut unet_calls, mut encoder_calls) = (false, 0, 0);
    let mut previous: Option<(GenerationSpec, BatchConditioning)> = None;
    for (index, spec) in prepared.specs.iter().enumerate() {
        if context.control.is_interrupted() {
            interrupted = true;
            break;
        }
        let started = Instant::now();
        // Batches of one job share their prompts, so later batches reuse the conditioning (A1111's
        // `cached_c` / `cached_uc`).
        let reusable = previous.as_ref().filter(|(prompts, _)| same_prompts(prompts, spec));
        let conditioning = match reusable {
            Some((_, conditioning)) => conditioning.clone(),
            None => {
                let conditioning = pipeline.encode_prompts(spec)?;
                encoder_calls += conditioning.encoder_calls;
                conditioning
            }
        };
        context.metrics.record("text_encode", started.elapsed());
        previous = Some((spec.clone(), conditioning.clone()));
        let init_latent = match &prepared.init_images {
            Some(images) => {
                let started = Instant::now();
                let batch: Vec<RgbImage> = (0..spec.batch_size()).map(|i| images[i % images.len()].clone()).collect();
                let latent = pipeline.encode_images(&images_to_tensor(&batch)?)?;
                context.metrics.record("encode_image", started.elapsed());
                Some(latent)
            }
            None => None,
        };
        let output = sample_batch(&mut pipeline, spec, &conditioning, init_latent.as_ref(), context, index)?;
        unet_calls += output.unet_calls;
        let started = Instant::now();
        let latents = output.sampled.latent;
        let images = pipeline.decode(&latents)?;
        context.metrics.record("decode", started.elapsed());
        batches.push(BatchResult { spec: spec.clone(), images, latents });
        if output.sampled.interrupted && context.control.is_interrupted() {
            interrupted = true;
            break;
        }
    }
    drop(pipeline);
    Ok(ExecutedGeneration { prepared, batches, interrupted, unet_calls, encoder_calls })
}

/// Whether two batches encode to the same conditioning (prompts and the settings the encoder uses).
fn same_prompts(a: &GenerationSpec, b: &GenerationSpec) -> bool {
    a.prompts == b.prompts
        && a.negative_prompts == b.negative_prompts
        && a.steps == b.steps
        && a.clip_skip == b.clip_skip
        && a.emphasis == b.emphasis
        && a.pad_cond_uncond == b.pad_cond_uncond
        && a.sampler.kind() == b.sampler.kind()
}

fn sample_batch(
    pipeline: &mut Pipeline<'_>,
    spec: &GenerationSpec,
    conditioning: &BatchConditioning,
    init_latent: Option<&Tensor>,
    context: &mut JobContext,
    batch: usize,
) -> crate::Result<sdrt_processing::SampleOutput> {
    let started = Instant::now();
    let cancel = AtomicBool::new(false);
    let steps_done = std::cell::Cell::new(0usize);
    let (job, progress, control) = (context.info.id, context.progress.clone(), context.control.clone());
    let mut on_step = |event: &StepEvent<'_>| {
        let done = event.step + 1;
        steps_done.set(done);
        progress.on_progress(&ProgressEvent {
            job,
            batch,
            step: done,
            total: event.total,
            eta: eta(started.elapsed(), done, event.total),
        });
        if control.take_stop_request() {
            cancel.store(true, Ordering::SeqCst);
        }
    };
    let hooks = Hooks { on_step: Some(&mut on_step), cancel: Some(&cancel) };
    let output = pipeline.sample(spec, conditioning, init_latent, hooks)?;
    context.metrics.record("sample", started.elapsed());
    context.metrics.steps += steps_done.get();
    Ok(output)
}

fn finalize(executed: ExecutedGeneration, context: &mut JobContext) -> crate::Result<GenerationOutput> {
    let started = Instant::now();
    let ExecutedGeneration { prepared, batches, interrupted, unet_calls, encoder_calls } = executed;
    let mut images = Vec::new();
    for batch in batches {
        for (i, image) in batch.images.into_iter().enumerate() {
            let (seed, subseed) = (batch.spec.noise.seeds[i], batch.spec.noise.subseeds[i]);
            let params = GenerationParams {
                seed: seed as i64,
                variation_seed: (prepared.subseed_strength != 0.0).then_some(subseed as i64),
                ..prepared.template.clone()
            };
            let latents = batch.latents.index_axis(ndarray::Axis(0), i).to_owned();
            let mut generated = GeneratedImage {
                image,
                seed,
                subseed,
                infotext: params.to_infotext(),
                latents,
                path: None,
                latents_path: None,
            };
            if let Some(outdir) = &prepared.settings.outdir {
                save_image(&mut generated, outdir, &prepared, &params)?;
            }
            images.push(generated);
        }
    }
    if prepared.settings.outdir.is_some() {
        context.metrics.record("save", started.elapsed());
    }
    Ok(GenerationOutput {
        images,
        interrupted,
        unet_calls,
        encoder_calls,
        model_name: prepared.handle.name.clone(),
        model_hash: prepared.handle.hash.clone(),
    })
}

fn save_image(
    generated: &mut GeneratedImage,
    outdir: &std::path::Path,
    prepared: &PreparedGeneration,
    params: &GenerationParams,
) -> crate::Result<()> {
    let io_error = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| crate::Error::Io { path, source }
    };
    std::fs::create_dir_all(outdir).map_err(|e| crate::Error::Io {
        path: outdir.to_owned(),
        source: sdrt_io::Error::Io { action: "creating", path: outdir.to_owned(), source: e },
    })?;
    let name = NameParams {
        seed: Some(generated.seed as i64),
        prompt: params.prompt.clone(),
        negative_prompt: params.negative_prompt.clone(),
        steps: params.steps,
        cfg_scale: match params.cfg_scale {
            InfotextValue::Float(v) => v,
            _ => 0.0,
        },
        width: params.width,
        height: params.height,
        sampler: params.sampler.clone(),
        scheduler: params.schedule_type.clone().unwrap_or_default(),
        model_name: prepared.handle.name.clone(),
        model_hash: prepared.handle.hash.clone(),
        ..NameParams::default()
    };
    let path = sdrt_io::next_image_path(outdir, prepared.settings.filename_pattern.as_deref(), &name, "png")
        .map_err(io_error(outdir))?;
    let image = &generated.image;
    let png = sdrt_io::encode_png_with_infotext(&image.pixels, image.width, image.height, &generated.infotext)
        .map_err(io_error(&path))?;
    sdrt_io::write_atomically(&path, &png).map_err(io_error(&path))?;
    if prepared.settings.save_latents {
        let latents_path = path.with_extension("npy");
        let mut bytes = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&generated.latents, &mut bytes).map_err(|e| crate::Error::Io {
            path: latents_path.clone(),
            source: sdrt_io::Error::Encode { format: "NPY", message: e.to_string() },
        })?;
        sdrt_io::write_atomically(&latents_path, &bytes).map_err(io_error(&latents_path))?;
        generated.latents_path = Some(latents_path);
    }
    generated.path = Some(path);
    Ok(())
}
