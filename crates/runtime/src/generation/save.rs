//! finalize: per image its infotext (the plan's template with its seeds), then the PNG with the infotext and
//! optionally its latents as `.npy`, written atomically under the A1111 file name.

use std::time::Instant;

use sdrt_io::{GenerationParams, InfotextValue, NameParams};

use super::{ExecutedGeneration, GeneratedImage, GenerationOutput, PreparedGeneration};
use crate::lifecycle::JobContext;

pub(crate) fn finalize(executed: ExecutedGeneration, context: &mut JobContext) -> crate::Result<GenerationOutput> {
    let started = Instant::now();
    let ExecutedGeneration { prepared, batches, interrupted, unet_calls, encoder_calls } = executed;
    let plan = &prepared.plan;
    let mut images = Vec::new();
    for batch in batches {
        for (i, image) in batch.images.into_iter().enumerate() {
            let (seed, subseed) = (batch.spec.noise.seeds[i], batch.spec.noise.subseeds[i]);
            let params = GenerationParams {
                seed: seed as i64,
                variation_seed: (plan.subseed_strength != 0.0).then_some(subseed as i64),
                ..plan.template.clone()
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
            if let Some(outdir) = &plan.settings.outdir {
                save_image(&mut generated, outdir, &prepared, &params)?;
            }
            images.push(generated);
        }
    }
    if plan.settings.outdir.is_some() {
        context.metrics.record("save", started.elapsed());
    }
    Ok(GenerationOutput {
        images,
        interrupted,
        unet_calls,
        encoder_calls,
        model_name: prepared.handle.name.clone(),
        model_hash: prepared.handle.hash.clone(),
        settings: prepared.plan.settings.clone(),
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
    let path = sdrt_io::next_image_path(outdir, prepared.plan.settings.filename_pattern.as_deref(), &name, "png")
        .map_err(io_error(outdir))?;
    let image = &generated.image;
    let png = sdrt_io::encode_png_with_infotext(&image.pixels, image.width, image.height, &generated.infotext)
        .map_err(io_error(&path))?;
    sdrt_io::write_atomically(&path, &png).map_err(io_error(&path))?;
    if prepared.plan.settings.save_latents {
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
