//! execute: the plan's passes per batch over one loaded pipeline: text encode → (init image encode) → first
//! pass → (hires: upscale → second pass) → decode, each stage timed and reported.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ndarray::{Axis, Slice};
use sdrt_processing::{
    BatchConditioning, GenerationSpec, Hooks, ImageRng, LATENT_FACTOR, NoiseParams, PassInputs, Pipeline, RgbImage,
    SampleOutput, Sampled, StepEvent, Tensor, images_to_tensor, upscale_latents,
};

use super::inpaint::{InpaintPlan, MaskedContent};
use super::plan::{HiresPlan, HiresUpscaler, JobPlan, to_image_buffer};
use super::{ExecutedGeneration, PreparedGeneration, poisoned};
use crate::lifecycle::JobContext;
use crate::progress::{ProgressEvent, eta};

/// One batch's decoded images and final latents.
pub(crate) struct BatchResult {
    pub(crate) spec: GenerationSpec,
    pub(crate) images: Vec<RgbImage>,
    pub(crate) latents: Tensor,
}

pub(crate) fn execute(prepared: PreparedGeneration, context: &mut JobContext) -> crate::Result<ExecutedGeneration> {
    let model = prepared.handle.model.clone();
    let mut model = model.lock().map_err(|_| poisoned())?;
    let mut passes = Passes {
        pipeline: Pipeline::new(&mut model)?,
        context,
        conditionings: Vec::new(),
        unet_calls: 0,
        encoder_calls: 0,
        preview_every: usize::try_from(prepared.plan.settings.show_progress_every_n_steps).unwrap_or(0),
    };
    let plan = &prepared.plan;
    let mut batches = Vec::with_capacity(plan.batches.len());
    let mut interrupted = false;
    // Every batch has the same size, init images and mask, so their latents and image conditioning are
    // computed once per job, as A1111's `init` does.
    let (init_latent, image_conditioning) = match plan.batches.first() {
        Some(first) => {
            let images_in = init_batch(plan, first);
            let init_latent = passes.init_latent(plan, images_in.as_deref())?;
            (init_latent, passes.image_conditioning(plan, first, images_in.as_deref())?)
        }
        None => (None, None),
    };
    for (index, spec) in plan.batches.iter().enumerate() {
        if passes.context.control.is_interrupted() {
            interrupted = true;
            break;
        }
        let inputs = PassInputs {
            init_latent: init_latent.as_ref(),
            mask: plan.inpaint.as_ref().map(|inpaint| &inpaint.latent_mask),
            image_conditioning: image_conditioning.as_ref(),
        };
        if let Some(networks) = plan.pass_networks.as_ref().filter(|_| index > 0) {
            passes.apply_networks(&networks.first)?;
        }
        let mut sampled = passes.sample(spec, inputs, index)?;
        if let (Some(hires), false) = (&plan.hires, sampled.interrupted) {
            if let Some(networks) = &plan.pass_networks {
                passes.apply_networks(&networks.hires)?;
            }
            sampled = passes.hires(plan, hires, spec, &sampled.latent, index)?;
        }
        let started = Instant::now();
        let mut images = passes.pipeline.decode(&sampled.latent)?;
        passes.context.metrics.record("decode", started.elapsed());
        if let Some(inpaint) = &plan.inpaint {
            images = overlay(images, inpaint)?;
        }
        batches.push(BatchResult { spec: spec.clone(), images, latents: sampled.latent });
        if sampled.interrupted && passes.context.control.is_interrupted() {
            interrupted = true;
            break;
        }
    }
    let (unet_calls, encoder_calls) = (passes.unet_calls, passes.encoder_calls);
    drop(passes);
    Ok(ExecutedGeneration { prepared, batches, interrupted, unet_calls, encoder_calls })
}

/// The pipeline and what the passes of one job share.
struct Passes<'p, 'm> {
    pipeline: Pipeline<'m>,
    context: &'p mut JobContext,
    /// Conditionings already encoded in this job: batches share their prompts (A1111's `cached_c` /
    /// `cached_uc`), and the hires pass has its own.
    conditionings: Vec<(GenerationSpec, BatchConditioning)>,
    unet_calls: usize,
    encoder_calls: usize,
    /// A live preview every this many steps (A1111's `show_progress_every_n_steps`); 0 = none.
    preview_every: usize,
}

impl Passes<'_, '_> {
    /// The VAE latents of this batch's init images, with the masked area replaced as `inpainting_fill` asks
    /// ("latent noise": noise from the first batch's seeds, as A1111 draws it; "latent nothing": zeros).
    fn init_latent(&mut self, plan: &JobPlan, images: Option<&[RgbImage]>) -> crate::Result<Option<Tensor>> {
        let Some(images) = images else { return Ok(None) };
        let latent = self.encode_images(images)?;
        let Some(inpaint) = &plan.inpaint else { return Ok(Some(latent)) };
        let filled = match inpaint.content {
            MaskedContent::LatentNoise => {
                let first = &plan.batches[0].noise;
                let shape = latent.shape();
                let params = NoiseParams {
                    latent_shape: [shape[1], shape[2], shape[3]],
                    seeds: first.seeds.iter().copied().cycle().take(shape[0]).collect(),
                    subseeds: vec![0; shape[0]],
                    subseed_strength: 0.0,
                    seed_resize_from: (0, 0),
                    source: first.source,
                    eta_noise_seed_delta: 0,
                };
                let noise = ImageRng::new(params)?.first()?;
                inpaint.latent_mask.fill(&latent, Some(&noise))?
            }
            MaskedContent::LatentNothing => inpaint.latent_mask.fill(&latent, None)?,
            MaskedContent::Fill | MaskedContent::Original => latent,
        };
        Ok(Some(filled))
    }

    /// An inpainting UNet's image conditioning for a first pass: from the (masked) init images in img2img,
    /// blank in txt2img. `None` for ordinary UNets.
    fn image_conditioning(
        &mut self,
        plan: &JobPlan,
        spec: &GenerationSpec,
        images: Option<&[RgbImage]>,
    ) -> crate::Result<Option<Tensor>> {
        if !plan.inpainting_model {
            return Ok(None);
        }
        let started = Instant::now();
        let weight = plan.settings.inpainting_mask_weight;
        let conditioning = match images {
            Some(images) => {
                let mask = plan.inpaint.as_ref().map(|inpaint| &inpaint.conditioning_mask);
                self.pipeline.inpainting_conditioning(&images_to_tensor(images)?, mask, weight)?
            }
            None => self.pipeline.blank_inpainting_conditioning(spec.batch_size(), spec.width, spec.height)?,
        };
        self.context.metrics.record("image_conditioning", started.elapsed());
        Ok(Some(conditioning))
    }

    fn encode_images(&mut self, images: &[RgbImage]) -> crate::Result<Tensor> {
        let started = Instant::now();
        let latent = self.pipeline.encode_images(&images_to_tensor(images)?)?;
        self.context.metrics.record("encode_image", started.elapsed());
        Ok(latent)
    }

    /// A1111's per-pass `extra_networks.activate`: merges `networks` (the VAE stays); cached conditionings stay
    /// valid because each pass's specs differ in their schedule steps.
    fn apply_networks(&mut self, networks: &[sdrt_models::AppliedLora]) -> crate::Result<()> {
        let model = self.pipeline.model_mut();
        let path = model.folder.root.clone();
        let skipped = model.apply_networks(networks).map_err(|source| crate::Error::Model { path, source })?;
        for problem in skipped {
            tracing::warn!("{problem}");
        }
        Ok(())
    }

    fn conditioning(&mut self, spec: &GenerationSpec) -> crate::Result<BatchConditioning> {
        let started = Instant::now();
        if let Some((_, known)) = self.conditionings.iter().find(|(seen, _)| same_conditioning(seen, spec)) {
            return Ok(known.clone());
        }
        let conditioning = self.pipeline.encode_prompts(spec)?;
        self.encoder_calls += conditioning.encoder_calls;
        self.context.metrics.record("text_encode", started.elapsed());
        self.conditionings.push((spec.clone(), conditioning.clone()));
        Ok(conditioning)
    }

    /// One sampling pass (txt2img from noise, or img2img from `inputs.init_latent`) with progress and interrupt.
    fn sample(&mut self, spec: &GenerationSpec, inputs: PassInputs<'_>, batch: usize) -> crate::Result<Sampled> {
        let conditioning = self.conditioning(spec)?;
        let started = Instant::now();
        let cancel = AtomicBool::new(false);
        let steps_done = Cell::new(0usize);
        let context = &*self.context;
        let (job, progress, control) = (context.info.id, &context.progress, &context.control);
        let sdxl = self.pipeline.schedule_family() == sdrt_processing::ModelFamily::Sdxl;
        let preview_every = self.preview_every;
        let mut on_step = |event: &StepEvent<'_>| {
            let done = event.step + 1;
            steps_done.set(done);
            // A1111's default live preview: "Approx cheap" of the current x0 prediction.
            let preview = (preview_every > 0 && done.is_multiple_of(preview_every))
                .then(|| sdrt_processing::approx_cheap_preview(event.denoised, sdxl).ok().map(std::sync::Arc::new))
                .flatten();
            progress.on_progress(&ProgressEvent {
                job,
                batch,
                step: done,
                total: event.total,
                eta: eta(started.elapsed(), done, event.total),
                preview,
            });
            if control.take_stop_request() {
                cancel.store(true, Ordering::SeqCst);
            }
        };
        let hooks = Hooks { on_step: Some(&mut on_step), cancel: Some(&cancel) };
        let SampleOutput { sampled, unet_calls } = self.pipeline.sample(spec, &conditioning, inputs, hooks)?;
        self.unet_calls += unet_calls;
        self.context.metrics.record("sample", started.elapsed());
        self.context.metrics.steps += steps_done.get();
        Ok(sampled)
    }

    /// A1111's `sample_hr_pass`: enlarge the first pass (in latent space, or decode → upscale → encode),
    /// truncate to the requested box, then img2img at the new size with fresh noise from the same seeds.
    fn hires(
        &mut self,
        plan: &JobPlan,
        hires: &HiresPlan,
        first: &GenerationSpec,
        latents: &Tensor,
        batch: usize,
    ) -> crate::Result<Sampled> {
        let started = Instant::now();
        let (width, height) = hires.upscale_to;
        let upscaled = match &hires.upscaler {
            HiresUpscaler::Latent(mode) => {
                upscale_latents(latents, height / LATENT_FACTOR, width / LATENT_FACTOR, *mode)?
            }
            upscaler => {
                let enlarged = self
                    .pipeline
                    .decode(latents)?
                    .iter()
                    .map(|image| {
                        let image = to_image_buffer(image, "hr_upscaler")?;
                        let resized = upscaler.resize(&image, width as u32, height as u32, "hr_upscaler")?;
                        Ok(RgbImage { width: width as u32, height: height as u32, pixels: resized.into_raw() })
                    })
                    .collect::<crate::Result<Vec<_>>>()?;
                self.encode_images(&enlarged)?
            }
        };
        let truncated = truncate(&upscaled, hires.truncate);
        self.context.metrics.record("hires_upscale", started.elapsed());
        let spec = hires.spec(first, (truncated.shape()[2], truncated.shape()[3]));
        // Inpainting UNets get blank conditioning at the hires size (A1111 v1.10 builds it at the first pass's
        // size for latent upscalers, which fails: its issue #6281).
        let image_conditioning = match plan.inpainting_model {
            true => Some(self.pipeline.blank_inpainting_conditioning(spec.batch_size(), spec.width, spec.height)?),
            false => None,
        };
        let inputs =
            PassInputs { init_latent: Some(&truncated), mask: None, image_conditioning: image_conditioning.as_ref() };
        self.sample(&spec, inputs, batch)
    }
}

/// This batch's init images: one per image, a single init image repeated.
fn init_batch(plan: &JobPlan, spec: &GenerationSpec) -> Option<Vec<RgbImage>> {
    let images = plan.init_images.as_ref()?;
    Some((0..spec.batch_size()).map(|i| images[i % images.len()].clone()).collect())
}

/// A1111's `apply_overlay` on every decoded image: the unmasked original laid back over the result (and the
/// result fitted back into the original for "Only masked").
fn overlay(images: Vec<RgbImage>, inpaint: &InpaintPlan) -> crate::Result<Vec<RgbImage>> {
    images
        .into_iter()
        .enumerate()
        .map(|(i, image)| {
            let result = to_image_buffer(&image, "image")?;
            let overlay = &inpaint.overlays[i % inpaint.overlays.len()];
            let composed = sdrt_io::apply_overlay(&result, overlay, inpaint.paste_to)
                .map_err(|source| crate::Error::InitImage { source })?;
            Ok(RgbImage { width: composed.width(), height: composed.height(), pixels: composed.into_raw() })
        })
        .collect()
}

/// `samples[:, :, ty//2 : h-(ty+1)//2, tx//2 : w-(tx+1)//2]` (A1111 keeps the centre of a covering resize).
fn truncate(latents: &Tensor, (columns, rows): (usize, usize)) -> Tensor {
    let (h, w) = (latents.shape()[2], latents.shape()[3]);
    let rows_kept = Slice::from(rows / 2..h - rows.div_ceil(2));
    let columns_kept = Slice::from(columns / 2..w - columns.div_ceil(2));
    latents.slice_axis(Axis(2), rows_kept).slice_axis(Axis(3), columns_kept).to_owned()
}

/// Whether two passes encode to the same conditioning (prompts and everything the encoder and prompt
/// schedules use).
fn same_conditioning(a: &GenerationSpec, b: &GenerationSpec) -> bool {
    a.prompts == b.prompts
        && a.negative_prompts == b.negative_prompts
        && a.schedule_steps() == b.schedule_steps()
        && a.clip_skip == b.clip_skip
        && a.emphasis == b.emphasis
        && a.pad_cond_uncond == b.pad_cond_uncond
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn truncation_keeps_the_centre_with_the_odd_row_at_the_end() {
        let latents = Tensor::from_shape_fn(IxDyn(&[1, 1, 6, 5]), |d| (d[2] * 10 + d[3]) as f32);
        let cut = truncate(&latents, (1, 3));
        assert_eq!(cut.shape(), &[1, 1, 3, 4]);
        assert_eq!(cut[[0, 0, 0, 0]], 10.0, "one row off the top, two off the bottom, none off the left");
        assert_eq!(cut[[0, 0, 2, 3]], 33.0);
    }
}
