//! Sampler overhead per step: each sampler on a 1×4×64×64 latent with a no-op denoiser and zero noise,
//! so the time is the sampler's own tensor arithmetic and bookkeeping.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::IxDyn;
use sdrt_processing::{
    Denoiser, Hooks, ModelSchedule, NoiseSource, Result, Sampler, SamplerKind, SamplerParams, Schedule,
    ScheduleOptions, Tensor,
};

const STEPS: usize = 10;

/// Returns its input as the x0 prediction.
struct NoOp;

impl Denoiser for NoOp {
    fn denoise(&mut self, x: &Tensor, _sigma: f64) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// Zero noise of the right shape.
struct Zeros;

impl NoiseSource for Zeros {
    fn noise(&mut self, _sigma: f64, _sigma_next: f64, like: &Tensor) -> Result<Tensor> {
        Ok(Tensor::zeros(like.raw_dim()))
    }
}

fn sampler_step(c: &mut Criterion) {
    let noise = Tensor::from_shape_fn(IxDyn(&[1, 4, 64, 64]), |i| ((i[2] * 64 + i[3]) % 17) as f32 * 0.1 - 0.8);
    let mut group = c.benchmark_group(format!("sampler_{STEPS}_steps_4x64x64"));
    for kind in [
        SamplerKind::Euler,
        SamplerKind::EulerA,
        SamplerKind::Heun,
        SamplerKind::DpmPp2M,
        SamplerKind::DpmPpSde,
        SamplerKind::DpmPp2MSde,
        SamplerKind::DpmPp3MSde,
        SamplerKind::Lms,
        SamplerKind::Ddim,
        SamplerKind::UniPc,
    ] {
        let model = ModelSchedule::scaled_linear();
        let sampler = Sampler::new(kind, Schedule::Automatic, ScheduleOptions::default(), SamplerParams::default())
            .expect("valid sampler");
        group.bench_function(kind.label(), |b| {
            b.iter(|| {
                let out = sampler
                    .txt2img(&model, &mut NoOp, &mut Zeros, black_box(&noise), STEPS, Hooks::default())
                    .expect("sampling runs");
                black_box(out.latent)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sampler_step);
criterion_main!(benches);
