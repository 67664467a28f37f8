//! `txt2img` / `img2img`: validate and prepare the job for the queue (`jobs`), run it on a blocking thread
//! through the runner, answer with base64 PNGs (infotext in each), the request with defaults filled in, and
//! A1111's `info` JSON string.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sdrt_api_types::{GenerationInfo, GenerationRequest, ImageResponse, Img2ImgRequest, JobKind, Txt2ImgRequest};
use sdrt_runtime::{GenerationJob, GenerationOutput, JobControl, ProcessingRequest};

use crate::error::{Error, Result};
use crate::images::{decode_image, decode_mask};
use crate::jobs::PreparedJob;
use crate::progress::ProgressTracker;
use crate::state::ServerState;

/// Checks a txt2img request and prepares its job.
pub(crate) fn prepare_txt2img(state: &ServerState, mut request: Txt2ImgRequest) -> Result<PreparedJob> {
    request.validate(&state.limits.request)?;
    registered_override(state, &mut request.base)?;
    let parameters = serde_json::to_value(&request).unwrap_or_default();
    let base = request.base.clone();
    // A1111 reports the hires pass's denoising strength in `info` (its txt2img keeps it only with enable_hr).
    let denoising_strength = request.enable_hr.then_some(request.denoising_strength);
    Ok(PreparedJob {
        kind: JobKind::Txt2img,
        request: ProcessingRequest::Txt2Img(request),
        base,
        parameters,
        denoising_strength,
    })
}

/// Checks an img2img request (`init_images` are base64 images, optionally `data:` URLs) and prepares its job.
pub(crate) fn prepare_img2img(state: &ServerState, mut request: Img2ImgRequest) -> Result<PreparedJob> {
    request.validate(&state.limits.request)?;
    registered_override(state, &mut request.base)?;
    let decode = &state.limits.decode;
    let init_images = request
        .init_images
        .iter()
        .map(|image| decode_image(decode, "init_images", image))
        .collect::<Result<Vec<_>>>()?;
    let mask = match request.mask.as_deref().filter(|m| !m.is_empty()) {
        Some(mask) => Some(decode_mask(decode, "mask", mask, request.mask_round)?),
        None => None,
    };
    let mut parameters = serde_json::to_value(&request).unwrap_or_default();
    if !request.include_init_images {
        // A1111 echoes the images back only when asked to.
        parameters["init_images"] = serde_json::Value::Null;
        parameters["mask"] = serde_json::Value::Null;
    }
    let base = request.base.clone();
    let denoising_strength = Some(request.denoising_strength);
    let request = ProcessingRequest::Img2Img { request, init_images, mask };
    Ok(PreparedJob { kind: JobKind::Img2img, request, base, parameters, denoising_strength })
}

/// A1111's blocking endpoints: queue the job and wait for it.
pub(crate) async fn submit_and_wait(state: Arc<ServerState>, body: &str, job: PreparedJob) -> Result<ImageResponse> {
    let (id, _) = state.submit(body, job).await?;
    state.wait_for(id).await
}

/// A request's `override_settings.sd_model_checkpoint` must name a registered model (by name, title or hash);
/// it is rewritten to the registered name the runtime resolves.
fn registered_override(state: &ServerState, base: &mut GenerationRequest) -> Result<()> {
    let Some(value) = base.override_settings.get("sd_model_checkpoint").and_then(|v| v.as_str()) else {
        return Ok(());
    };
    let name = state
        .registered_model(value)
        .map_err(|e| Error::Field { field: "override_settings.sd_model_checkpoint", message: e.to_string() })?;
    base.override_settings.insert("sd_model_checkpoint".into(), name.into());
    Ok(())
}

/// Runs a prepared job (the queue's worker calls this, one job at a time).
pub(crate) async fn execute(
    state: &Arc<ServerState>,
    prepared: PreparedJob,
    control: JobControl,
    job_progress: Arc<ProgressTracker>,
) -> Result<ImageResponse> {
    let PreparedJob { request, base, parameters, denoising_strength, .. } = prepared;
    let _turn = state.compute.lock().await;
    let job_timestamp = job_timestamp();
    state.progress.start(base.n_iter, base.steps, job_timestamp.clone());
    job_progress.start(base.n_iter, base.steps, job_timestamp.clone());
    let mut settings = state.settings();
    if !base.save_images {
        settings.outdir = None;
    }
    let job = GenerationJob::new(request, settings, Arc::clone(&state.provider));
    let runner = Arc::clone(&state.runner);
    let progress = crate::jobs::progress_sink(job_progress, Arc::clone(&state.progress));
    let joined = tokio::task::spawn_blocking(move || runner.run_with(job, progress, control)).await;
    state.progress.finish();
    let (output, _metrics) = joined.map_err(|e| Error::Worker(e.to_string()))??;
    let images = if base.send_images { encode_images(&output)? } else { Vec::new() };
    let info = generation_info(&base, &output, denoising_strength, job_timestamp);
    Ok(ImageResponse { images, parameters, info: info.to_info_string() })
}

fn encode_images(output: &GenerationOutput) -> Result<Vec<String>> {
    output
        .images
        .iter()
        .enumerate()
        .map(|(index, generated)| {
            let image = &generated.image;
            sdrt_io::encode_png_with_infotext(&image.pixels, image.width, image.height, &generated.infotext)
                .map(|png| BASE64.encode(png))
                .map_err(|source| Error::Encode { index, source })
        })
        .collect()
}

/// A1111's `Processed.js()` for a job without styles, scripts or a grid.
fn generation_info(
    base: &GenerationRequest,
    output: &GenerationOutput,
    denoising_strength: Option<f64>,
    job_timestamp: String,
) -> GenerationInfo {
    let settings = &output.settings;
    let count = output.images.len();
    let first = output.images.first();
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    GenerationInfo {
        prompt: base.prompt.clone(),
        all_prompts: vec![base.prompt.clone(); count],
        negative_prompt: base.negative_prompt.clone(),
        all_negative_prompts: vec![base.negative_prompt.clone(); count],
        seed: first.map_or(base.seed, |i| as_i64(i.seed)),
        all_seeds: output.images.iter().map(|i| as_i64(i.seed)).collect(),
        subseed: first.map_or(base.subseed, |i| as_i64(i.subseed)),
        all_subseeds: output.images.iter().map(|i| as_i64(i.subseed)).collect(),
        subseed_strength: base.subseed_strength,
        width: base.width,
        height: base.height,
        // The canonical name ("Euler a" for "k_euler_a"), as A1111 reports it.
        sampler_name: sdrt_api_types::resolve_sampler_and_scheduler(
            "sampler_name",
            base.requested_sampler(),
            base.scheduler.as_deref(),
        )
        .map_or_else(|_| base.requested_sampler().to_owned(), |choice| choice.sampler.name.to_owned()),
        cfg_scale: base.cfg_scale,
        steps: base.steps,
        batch_size: base.batch_size,
        sd_model_name: Some(output.model_name.clone()),
        sd_model_hash: Some(output.model_hash.clone()),
        seed_resize_from_w: base.seed_resize_from_w,
        seed_resize_from_h: base.seed_resize_from_h,
        denoising_strength,
        infotexts: output.images.iter().map(|i| i.infotext.clone()).collect(),
        job_timestamp,
        clip_skip: settings.clip_skip,
        version: settings.version.clone(),
        ..GenerationInfo::default()
    }
}

fn job_timestamp() -> String {
    jiff::fmt::strtime::format("%Y%m%d%H%M%S", &jiff::ZonedDateTime::now()).unwrap_or_default()
}
