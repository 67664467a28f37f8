//! Per-stage costs around the models: prompt tokenize + encode on the tiny fixture (a 2-chunk prompt and a
//! negative, no cache hits), and classifier-free guidance's own work per denoiser call (row gathering,
//! splitting and combining) with a UNet that costs nothing, at SD 1.5's 4×64×64 latent.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::IxDyn;
use sdrt_models::{LoadedModel, ModelFolder, SessionConfig};
use sdrt_processing::{
    CfgDenoiser, Denoiser, DiscreteDenoiser, Emphasis, GenerationSpec, ModelSchedule, NoiseParams, Pipeline,
    Prediction, Result, Sampler, SamplerParams, ScheduledCond, Tensor, UNetModel,
};

/// Returns its input: only the guidance arithmetic around it is timed.
struct Identity;

impl UNetModel for Identity {
    type Cond = ();
    fn predict(&mut self, x_in: &Tensor, _timestep: f32, _conds: &[&()]) -> Result<Tensor> {
        Ok(x_in.clone())
    }
}

fn cfg_combine(c: &mut Criterion) {
    let x = Tensor::from_shape_fn(IxDyn(&[1, 4, 64, 64]), |i| (i[3] % 7) as f32 * 0.1);
    let inner = DiscreteDenoiser::new(Identity, ModelSchedule::scaled_linear(), Prediction::Epsilon);
    let conds = vec![vec![(ScheduledCond::constant(()), 1.0)]];
    let mut cfg = CfgDenoiser::new(inner, conds, vec![ScheduledCond::constant(())], 7.0).expect("valid guidance");
    c.bench_function("cfg_denoise_call_1x4x64x64", |b| b.iter(|| black_box(cfg.denoise(&x, 3.0).expect("denoise"))));
}

fn tokenize_and_encode(c: &mut Criterion) {
    sdrt_models::ensure_runtime().expect("ONNX Runtime (run `cargo xtask provision-ort`)");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/sd15-tiny");
    let folder = ModelFolder::open(&dir).expect("fixture model");
    let config = SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() };
    let mut model = LoadedModel::load(folder, &config).expect("loads");
    let mut pipeline = Pipeline::new(&mut model).expect("pipeline");
    let long = "a (lighthouse:1.2) on a cliff at dusk, waves, seagulls, dramatic sky, ".repeat(6);
    let spec = GenerationSpec {
        prompts: vec![long],
        negative_prompts: vec!["blurry, lowres".into()],
        steps: 20,
        cfg_scale: 7.0,
        width: 64,
        height: 64,
        sampler: Sampler::from_names("Euler", None, SamplerParams::default()).expect("sampler"),
        noise: NoiseParams {
            latent_shape: [4, 8, 8],
            seeds: vec![1],
            subseeds: vec![0],
            subseed_strength: 0.0,
            seed_resize_from: (-1, -1),
            source: sdrt_processing::RandomSource::Gpu,
            eta_noise_seed_delta: 0,
        },
        clip_skip: 1,
        emphasis: Emphasis::Original,
        denoising_strength: None,
        pad_cond_uncond: false,
        after_first_pass: None,
        noise_multiplier: 1.0,
        textual_inversions: Default::default(),
    };
    c.bench_function("tokenize_encode_2chunk_prompt_and_negative", |b| {
        b.iter(|| black_box(pipeline.encode_prompts(&spec).expect("encode")))
    });
}

criterion_group!(benches, cfg_combine, tokenize_and_encode);
criterion_main!(benches);
