//! One UNet call on the sd15-tiny fixture (batch 2, 8×8 latents): through the typed `Unet` wrapper vs the
//! raw `OnnxModel::run_f32` session call, to show what the wrapper's checks and conversions cost; and the
//! wrapper with `bound_io` on and off.

mod common;

use common::{pseudo_random, sd15_tiny};
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array1, Array3, Array4, ArrayD, IxDyn};
use sdrt_models::{OnnxModel, SessionConfig, Unet, UnetInput};

fn unet_call(c: &mut Criterion) {
    let config = SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() };
    let sample = Array4::from_shape_vec((2, 4, 8, 8), pseudo_random(512, 1)).expect("shape");
    let cond = Array3::from_shape_vec((2, 77, 8), pseudo_random(2 * 77 * 8, 2)).expect("shape");
    let timesteps = Array1::from_elem(2, 500.0f32);

    let mut unet = Unet::load(&sd15_tiny("unet"), &config).expect("sd15-tiny unet loads");
    c.bench_function("unet sd15-tiny wrapper", |b| {
        b.iter(|| unet.predict(&UnetInput::new(sample.view(), timesteps.view(), cond.view())).expect("runs"))
    });

    let mut raw = OnnxModel::load_with("unet", &sd15_tiny("unet"), &config).expect("loads");
    c.bench_function("unet sd15-tiny raw session", |b| {
        b.iter(|| {
            raw.run_f32(vec![
                ("sample", sample.clone().into_dyn()),
                ("timestep", ArrayD::from_elem(IxDyn(&[]), 500.0f32)),
                ("encoder_hidden_states", cond.clone().into_dyn()),
            ])
            .expect("runs")
        })
    });
}

/// Zero-copy inputs and pre-allocated outputs (`bound_io`) on vs off, at 8×8 latents and at 64×64 (a 512²
/// image's latent size, where the copies are 64× larger).
fn bound_io(c: &mut Criterion) {
    for side in [8, 64] {
        let sample = Array4::from_shape_vec((2, 4, side, side), pseudo_random(2 * 4 * side * side, 1)).expect("shape");
        let cond = Array3::from_shape_vec((2, 77, 8), pseudo_random(2 * 77 * 8, 2)).expect("shape");
        let timesteps = Array1::from_elem(2, 500.0f32);
        for bound_io in [true, false] {
            let config = SessionConfig { intra_op_threads: Some(1), bound_io, ..SessionConfig::default() };
            let mut unet = Unet::load(&sd15_tiny("unet"), &config).expect("sd15-tiny unet loads");
            let name = format!("unet sd15-tiny {side}x{side} bound_io={bound_io}");
            c.bench_function(&name, |b| {
                b.iter(|| unet.predict(&UnetInput::new(sample.view(), timesteps.view(), cond.view())).expect("runs"))
            });
        }
    }
}

criterion_group!(benches, unet_call, bound_io);
criterion_main!(benches);
