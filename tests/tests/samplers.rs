//! Every sampler against `tests/fixtures/samplers/` (k-diffusion and A1111's algorithms on an analytic
//! model with replayed noise; see its README.md): final latents within 1e-4·max|ref|, the σ sequence,
//! the model-call σ and the noise-call order.

use std::cell::RefCell;
use std::rc::Rc;

use ndarray::{ArrayD, Axis, IxDyn};
use sdrt_processing::{
    CfgDenoiser, Denoiser, DiscreteDenoiser, Hooks, Img2ImgSteps, ModelSchedule, NoiseSource, Prediction, Result,
    Sampler, SamplerKind, SamplerParams, Schedule, ScheduleOptions, ScheduledCond, Tensor, UNetModel, Unguided,
};
use sdrt_tests::{fixture, fixture_json};

fn npy(relative: &str) -> ArrayD<f32> {
    let path = fixture(&format!("samplers/{relative}"));
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// D(x, σ) = c1·x/(σ²+1) + c2, recording the σ of every call.
struct Analytic {
    c1: f64,
    c2: f64,
    calls: Rc<RefCell<Vec<f64>>>,
}

impl Denoiser for Analytic {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.calls.borrow_mut().push(sigma);
        let scale = self.c1 / (sigma * sigma + 1.0);
        Ok(x.mapv(|v| (f64::from(v) * scale + self.c2) as f32))
    }
}

/// The fixture's ε model behind a UNet interface: ε(x, t) = (x·k − D(x·k, σ(t)))/σ(t), k = √(1+σ²), with
/// σ(t) the log-linear interpolation of the float32 σ table; the conditioning is (c1, c2).
struct EpsUnet {
    table: ModelSchedule,
    calls: Rc<RefCell<Vec<f64>>>,
}

impl UNetModel for EpsUnet {
    type Cond = (f64, f64);
    fn predict(&mut self, x_in: &Tensor, timestep: f32, conds: &[&(f64, f64)]) -> Result<Tensor> {
        let t = f64::from(timestep).clamp(0.0, 999.0);
        let sigma = self.table.t_to_sigma(t);
        let k = (1.0 + sigma * sigma).sqrt();
        let mut out = x_in.clone();
        // One recorded evaluation per batch row: guidance batches cond and uncond rows into one call.
        for (mut row, cond) in out.axis_iter_mut(Axis(0)).zip(conds) {
            self.calls.borrow_mut().push(t);
            row.mapv_inplace(|v| {
                let xk = f64::from(v) * k;
                ((xk - (cond.0 * xk / (sigma * sigma + 1.0) + cond.1)) / sigma) as f32
            });
        }
        Ok(out)
    }
}

/// Replays `bank[i]` for the i-th call and records the σ pair.
struct Replay {
    bank: ArrayD<f32>,
    calls: Vec<(f64, f64)>,
}

impl NoiseSource for Replay {
    fn noise(&mut self, sigma: f64, sigma_next: f64, like: &Tensor) -> Result<Tensor> {
        let i = self.calls.len();
        self.calls.push((sigma, sigma_next));
        let noise = self.bank.index_axis(Axis(0), i).to_owned();
        assert_eq!(noise.shape(), like.shape());
        Ok(noise)
    }
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap()).collect()).unwrap_or_default()
}

fn params(case: &serde_json::Value) -> SamplerParams {
    let kw = &case["kwargs"];
    let num = |k: &str| match &kw[k] {
        serde_json::Value::String(s) if s == "inf" => Some(f64::INFINITY),
        v => v.as_f64(),
    };
    let mut p = SamplerParams {
        eta: num("eta").or_else(|| case["eta"].as_f64()),
        s_churn: num("s_churn").unwrap_or(0.0),
        s_tmin: num("s_tmin").unwrap_or(0.0),
        s_tmax: num("s_tmax").unwrap_or(f64::INFINITY),
        s_noise: num("s_noise").unwrap_or(1.0),
        ..Default::default()
    };
    if case["id"].as_str().unwrap().contains("euler_a__automatic__n10__s_noise0.9") {
        // A1111 does not forward s_noise to Euler a; passing it must change nothing.
        p.s_noise = 0.9;
    }
    p
}

fn assert_close_rel(found: &[f64], expected: &[f64], rel: f64, what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}: {found:?} vs {expected:?}");
    for (f, e) in found.iter().zip(expected) {
        assert!((f - e).abs() <= rel * e.abs().max(1e-6), "{what}: {f} vs {e}");
    }
}

struct Outcome {
    latent: Tensor,
    model_calls: Vec<f64>,
    noise: Vec<(f64, f64)>,
}

fn run_case(case: &serde_json::Value, index: &serde_json::Value, init: &Tensor, bank: &ArrayD<f32>) -> Outcome {
    let id = case["id"].as_str().unwrap();
    let label = case["sampler"].as_str().unwrap();
    let kind = SamplerKind::from_name(label).unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let schedule = case["schedule"].as_str().map_or(Schedule::Automatic, |s| Schedule::from_name(s).unwrap());
    let sampler = Sampler::new(kind, schedule, ScheduleOptions::default(), params(case)).unwrap();
    let model = if kind == SamplerKind::Lcm { ModelSchedule::lcm() } else { ModelSchedule::scaled_linear() };
    if let Some(expected) = case["sigmas"].as_array().filter(|_| !id.starts_with("dpm_adaptive")) {
        let expected: Vec<f64> = expected.iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close_rel(&sampler.sigmas(steps, &model).unwrap(), &expected, 1e-6, &format!("{id} sigmas"));
    }
    let m = &index["model"];
    let (c1, c2) = (m["c1"].as_f64().unwrap(), m["c2"].as_f64().unwrap());
    let calls = Rc::new(RefCell::new(Vec::new()));
    let mut noise = Replay { bank: bank.clone(), calls: Vec::new() };
    let unet = |calls: &Rc<RefCell<Vec<f64>>>| EpsUnet { table: ModelSchedule::scaled_linear(), calls: calls.clone() };
    let mut denoiser: Box<dyn Denoiser> = if kind == SamplerKind::DdimCfgPp {
        let u = &m["uncond_for_cfgpp"];
        let inner = DiscreteDenoiser::new(unet(&calls), model.clone(), Prediction::Epsilon);
        let uncond = ScheduledCond::constant((u["c1"].as_f64().unwrap(), u["c2"].as_f64().unwrap()));
        let conds = vec![vec![(ScheduledCond::constant((c1, c2)), 1.0)]];
        Box::new(CfgDenoiser::new(inner, conds, vec![uncond], case["cfg_scale"].as_f64().unwrap()).unwrap())
    } else if kind == SamplerKind::Lcm || id.ends_with("eps_wrapper") {
        Box::new(Unguided::new(DiscreteDenoiser::new(unet(&calls), model.clone(), Prediction::Epsilon), (c1, c2)))
    } else {
        Box::new(Analytic { c1, c2, calls: calls.clone() })
    };
    // σ-space samplers run on the fixture's exact float32 σ (ancestral steps to a tiny σ are ill-conditioned
    // in float32, so a 1-ulp different σ moves 2-step results by ~1e-4); the σ themselves are compared
    // above and in sigmas.rs. The others go through txt2img as A1111 calls them.
    let fixed_sigmas = f64s(&case["sigmas"]);
    let uses_schedule = !kind.is_timestep_sampler()
        && !matches!(kind, SamplerKind::DpmFast | SamplerKind::DpmAdaptive | SamplerKind::Lcm);
    let out = if uses_schedule {
        let x = init.mapv(|v| (f64::from(v) * fixed_sigmas[0]) as f32);
        sampler.sample_sigmas(denoiser.as_mut(), &mut noise, x, &fixed_sigmas, Hooks::default()).unwrap()
    } else {
        sampler.txt2img(&model, denoiser.as_mut(), &mut noise, init, steps, Hooks::default()).unwrap()
    };
    assert!(!out.interrupted);
    let model_calls = calls.borrow().clone();
    Outcome { latent: out.latent, model_calls, noise: noise.calls }
}

#[test]
fn every_sampler_case_matches_its_reference() {
    let index = fixture_json("samplers/cases.json");
    let init = npy("noise/init.npy");
    let bank = npy("noise/bank.npy");
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut worst = (0.0f64, String::new());
    let mut covered = std::collections::BTreeSet::new();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let expected = npy(case["final"].as_str().unwrap());
        let out = run_case(case, &index, &init, &bank);
        check_model_calls(case, &out.model_calls);
        let scale = expected.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let diff = out
            .latent
            .iter()
            .zip(expected.iter())
            .fold(0.0f64, |m, (a, b)| m.max((f64::from(*a) - f64::from(*b)).abs()));
        assert_eq!(out.latent.shape(), expected.shape(), "{id}");
        assert!(diff <= 1e-4 * scale, "{id}: max|Δ| = {diff:e}, max|ref| = {scale}");
        if diff / scale > worst.0 {
            worst = (diff / scale, id.to_owned());
        }

        let noise_calls = case["noise_calls"].as_array().unwrap();
        assert_eq!(out.noise.len(), noise_calls.len(), "{id}: noise draws");
        for (call, (s, sn)) in noise_calls.iter().zip(&out.noise) {
            if call["kind"] == "noise_sampler" {
                let expected = [call["sigma"].as_f64().unwrap(), call["sigma_next"].as_f64().unwrap()];
                assert_close_rel(&[*s, *sn], &expected, sigma_tolerance(id), &format!("{id} noise σ"));
            }
        }
        covered.insert(case["sampler"].as_str().unwrap().to_owned());
    }
    assert_eq!(covered.len(), SamplerKind::ALL.len(), "every sampler covered: {covered:?}");
    eprintln!("worst relative max|Δ|: {:e} ({})", worst.0, worst.1);
}

/// Relative tolerance for the σ a sampler visits. DPM fast / adaptive keep k-diffusion's float32 time grid and
/// step-size state, and adaptive's controller amplifies float32 rounding of the latent (the reference is
/// float64), so its later σ drift by up to ~1e-3 while the result stays within tolerance.
fn sigma_tolerance(id: &str) -> f64 {
    if id.starts_with("dpm_adaptive") {
        2e-3
    } else if id.starts_with("dpm_fast") {
        1e-4
    } else {
        1e-5
    }
}

/// The number (and, where both sides record the same quantity, the values) of model calls.
fn check_model_calls(case: &serde_json::Value, found: &[f64]) {
    let id = case["id"].as_str().unwrap();
    let label = case["sampler"].as_str().unwrap();
    let sigmas = f64s(&case["denoiser_calls"]);
    let timesteps = f64s(&case["model_calls_t"]);
    let expected_count = if timesteps.is_empty() { sigmas.len() } else { timesteps.len() };
    let per_call = if label == "DDIM CFG++" { 2 } else { 1 };
    assert_eq!(found.len(), expected_count * per_call, "{id}: model calls");
    if label == "LCM" {
        assert_close_rel(found, &timesteps, 1e-6, &format!("{id} UNet timesteps"));
    } else if timesteps.is_empty() && !id.ends_with("eps_wrapper") {
        assert_close_rel(found, &sigmas, sigma_tolerance(id), &format!("{id} denoiser σ"));
    }
}

#[test]
fn timestep_samplers_reject_too_few_steps_and_sde_samplers_survive_one_step() {
    let model = ModelSchedule::scaled_linear();
    let init = npy("noise/init.npy");
    let bank = npy("noise/bank.npy");
    let unipc = Sampler::from_names("UniPC", None, SamplerParams::default()).unwrap();
    let calls = Rc::new(RefCell::new(Vec::new()));
    let mut d = Analytic { c1: 0.8, c2: 0.1, calls };
    let mut noise = Replay { bank: bank.clone(), calls: Vec::new() };
    let err = unipc.txt2img(&model, &mut d, &mut noise, &init, 2, Hooks::default()).unwrap_err().to_string();
    assert!(err.contains("UniPC order 3"), "{err}");
    // k-diffusion crashes on one step of DPM++ 2M SDE; we return the x0 prediction instead.
    let sde = Sampler::from_names("DPM++ 2M SDE", None, SamplerParams::default()).unwrap();
    let out = sde.txt2img(&model, &mut d, &mut noise, &init, 1, Hooks::default()).unwrap();
    let sigma0 = sde.sigmas(1, &model).unwrap()[0];
    let expected = init.mapv(|v| (f64::from(v) * sigma0 * 0.8 / (sigma0 * sigma0 + 1.0) + 0.1) as f32);
    assert!(out.latent.iter().zip(expected.iter()).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn unknown_names_and_bad_parameters_are_errors() {
    let err = Sampler::from_names("Euler c", None, SamplerParams::default()).unwrap_err().to_string();
    assert!(err.contains("sampler_name") && err.contains("DPM++ 2M"), "{err}");
    let err = Sampler::from_names("Euler", Some("warp"), SamplerParams::default()).unwrap_err().to_string();
    assert!(err.contains("scheduler") && err.contains("karras"), "{err}");
    let legacy = Sampler::from_names("DPM++ 2M SDE Karras", None, SamplerParams::default()).unwrap();
    assert_eq!((legacy.kind(), legacy.schedule()), (SamplerKind::DpmPp2MSde, Schedule::Karras));
    let bad = SamplerParams { s_churn: -1.0, ..Default::default() };
    assert!(Sampler::from_names("Euler", None, bad).unwrap_err().to_string().contains("s_churn"));
    let model = ModelSchedule::scaled_linear();
    let x = Tensor::zeros(IxDyn(&[1, 4, 8, 8]));
    let calls = Rc::new(RefCell::new(Vec::new()));
    let mut d = Analytic { c1: 0.8, c2: 0.1, calls };
    let mut noise = Replay { bank: npy("noise/bank.npy"), calls: Vec::new() };
    let wrong = Tensor::zeros(IxDyn(&[1, 4, 4, 4]));
    let sampler = Sampler::from_names("Euler", None, SamplerParams::default()).unwrap();
    let steps = Img2ImgSteps::from_strength(10, 0.5).unwrap();
    let err = sampler.img2img(&model, &mut d, &mut noise, &x, &wrong, steps, Hooks::default()).unwrap_err().to_string();
    assert!(err.contains("noise"), "{err}");
}

/// The wire table (api-types, what requests and `/samplers` name) and the processing table (what runs) must
/// describe the same samplers the same way: both are A1111's `samplers_k_diffusion` / timestep lists.
#[test]
fn the_api_and_processing_sampler_tables_agree() {
    use sdrt_api_types::{SAMPLERS, SamplerFamily, find_scheduler};
    assert_eq!(SAMPLERS.len(), SamplerKind::ALL.len(), "one row per sampler in both tables");
    for info in SAMPLERS {
        let kind = SamplerKind::from_name(info.name).unwrap_or_else(|e| panic!("{}: {e}", info.name));
        assert_eq!(kind.label(), info.name);
        assert_eq!(kind.aliases(), info.aliases, "{}", info.name);
        assert_eq!(kind.is_second_order(), info.second_order, "{}: second order", info.name);
        assert_eq!(kind.discards_penultimate_sigma(), info.discard_next_to_last_sigma, "{}: discard", info.name);
        assert_eq!(kind.uses_ensd(), info.uses_ensd, "{}: ENSD", info.name);
        assert_eq!(kind.uses_brownian_noise(), info.brownian_noise, "{}: Brownian noise", info.name);
        assert_eq!(kind.is_timestep_sampler(), info.family == SamplerFamily::Timesteps, "{}: family", info.name);
        let api_default = info.default_scheduler.and_then(find_scheduler).map(|s| s.label);
        let processing_default = Some(kind.default_schedule()).filter(|s| *s != Schedule::Automatic).map(|s| s.label());
        assert_eq!(api_default, processing_default, "{}: the schedule Automatic means", info.name);
    }
}

/// `BrownianNoise` against k-diffusion's `BrownianTreeNoiseSampler` on torchsde (passes/brownian.json): the same
/// normals for the same seeds and σ pairs, including queries past the tree's ends (clamped) and upward steps.
#[test]
fn brownian_noise_matches_torchsde() {
    use sdrt_processing::BrownianNoise;
    let cases = fixture_json("passes/brownian.json");
    let seeds: Vec<u64> = cases["seeds"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
    let shape: Vec<usize> = cases["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
    let (min, max) = (cases["sigma_min"].as_f64().unwrap(), cases["sigma_max"].as_f64().unwrap());
    let mut noise = BrownianNoise::new(&seeds, [shape[0], shape[1], shape[2]], min, max).unwrap();
    let like = Tensor::zeros(IxDyn(&[seeds.len(), shape[0], shape[1], shape[2]]));
    for query in cases["queries"].as_array().unwrap() {
        let (sigma, next) = (query["sigma"].as_f64().unwrap(), query["sigma_next"].as_f64().unwrap());
        let ours = noise.noise(sigma, next, &like).unwrap();
        let want: ArrayD<f32> = ndarray_npy::read_npy(fixture(query["noise"].as_str().unwrap())).unwrap();
        let worst = ours.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "σ {sigma} → {next}: noise differs by {worst}");
    }
}
