//! What the hires and inpainting passes add around the UNet, at SD 1.5's 512² sizes: the latent mask blend
//! (once per denoiser call, on `[1, 4, 64, 64]`) and the latent upscale of a hires pass (64² → 128² latents).
//! Compare with one UNet call (seconds on CPU): both should be negligible.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::IxDyn;
use sdrt_processing::{LatentMask, LatentUpscaleMode, Tensor, upscale_latents};

fn latent(batch: usize, side: usize) -> Tensor {
    Tensor::from_shape_fn(IxDyn(&[batch, 4, side, side]), |d| ((d[1] * 7 + d[2] * 3 + d[3]) % 17) as f32 * 0.1)
}

fn mask_blend(c: &mut Criterion) {
    let levels: Vec<u8> = (0..64 * 64).map(|i| if (i % 64) < 32 { 255 } else { 0 }).collect();
    let mask = LatentMask::from_levels(&levels, 64, 64, true).expect("mask");
    let (x, init) = (latent(1, 64), latent(1, 64).mapv(|v| -v));
    c.bench_function("mask_blend_1x4x64x64", |b| b.iter(|| black_box(mask.blend(&x, &init).expect("blend"))));
}

fn hires_upscale(c: &mut Criterion) {
    let x = latent(1, 64);
    for mode in [LatentUpscaleMode::Bilinear, LatentUpscaleMode::BicubicAntialiased, LatentUpscaleMode::NearestExact] {
        c.bench_function(&format!("upscale_latents_64_to_128_{mode:?}"), |b| {
            b.iter(|| black_box(upscale_latents(&x, 128, 128, mode).expect("upscale")))
        });
    }
}

criterion_group!(benches, mask_blend, hires_upscale);
criterion_main!(benches);
