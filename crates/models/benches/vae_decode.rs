//! One VAE decode on the sd15-tiny fixture (1×4×8×8 latents → 1×3×64×64 pixels) through the typed
//! `VaeDecoder`, one intra-op thread, like benches/unet.rs does for the UNet.

use std::hint::black_box;

mod common;

use common::{pseudo_random, sd15_tiny};
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array4;
use sdrt_models::{SessionConfig, VaeDecoder};

fn vae_decode(c: &mut Criterion) {
    let config = SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() };
    // Latents as the sampler hands them over: std ≈ 1, already divided by the scaling factor.
    let latents =
        Array4::from_shape_vec((1, 4, 8, 8), pseudo_random(256, 3)).expect("shape").mapv(|v| v * 3.4 / 0.18215);

    let mut vae = VaeDecoder::load(&sd15_tiny("vae_decoder"), &config).expect("sd15-tiny vae_decoder loads");
    let image = vae.decode(latents.view()).expect("decodes");
    assert_eq!(image.shape(), &[1, 3, 64, 64], "decoder output shape");
    assert!(image.iter().all(|v| v.is_finite()), "decoder output is finite");

    c.bench_function("vae_decode sd15-tiny 64x64", |b| {
        b.iter(|| vae.decode(black_box(latents.view())).expect("decodes"))
    });
}

criterion_group!(benches, vae_decode);
criterion_main!(benches);
