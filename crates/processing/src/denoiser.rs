//! The model side of sampling: the `Denoiser` trait samplers call (σ, x → x0), the discrete-σ table of
//! an SD model (k-diffusion's `DiscreteSchedule`), the UNet adapter (`CompVisDenoiser` /
//! `CompVisVDenoiser` / A1111's LCM wrapper) and classifier-free guidance with AND weights.

use ndarray::{ArrayD, Zip};

use crate::error::{Error, Result};

/// A latent tensor (NCHW for SD latents; samplers treat it as a flat bag of numbers).
pub type Tensor = ArrayD<f32>;

/// Number of training timesteps of SD 1.x / 2.x / XL.
pub const TRAINING_TIMESTEPS: usize = 1000;
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;
/// LCM distils the 1000-step schedule to 50 "original" steps.
const LCM_ORIGINAL_STEPS: usize = 50;

/// Anything that turns a noisy latent at noise level σ into a prediction of the clean latent.
///
/// Samplers see only this trait, never a model runtime.
pub trait Denoiser {
    /// The denoised (x0) prediction of `x` at noise level `sigma`.
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// The unconditional x0 prediction of the last [`Denoiser::denoise`] call, when this denoiser applies
    /// classifier-free guidance (needed by DDIM CFG++).
    fn last_uncond(&self) -> Option<&Tensor> {
        None
    }

    /// Multiplies the guidance scale for the following calls (DDIM CFG++ maps CFG 0..12.5 onto 0..1).
    /// Returns `false` when this denoiser has no guidance to scale.
    fn set_guidance_multiplier(&mut self, _multiplier: f64) -> bool {
        false
    }
}

impl<D: Denoiser + ?Sized> Denoiser for &mut D {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        (**self).denoise(x, sigma)
    }
    fn last_uncond(&self) -> Option<&Tensor> {
        (**self).last_uncond()
    }
    fn set_guidance_multiplier(&mut self, multiplier: f64) -> bool {
        (**self).set_guidance_multiplier(multiplier)
    }
}

/// What the UNet's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The model predicts the added noise (SD 1.x, SDXL, SD 2.x base).
    Epsilon,
    /// The model predicts v = α·ε − σ_vp·x0 (SD 2.x 768-v).
    V,
}

/// A UNet: given the scaled latent `x_in`, the (possibly fractional) timestep and conditioning, returns its
/// raw prediction (ε or v) with the shape of `x_in`. Implemented by `sdrt-models`' UNet and by test fakes.
pub trait UNetModel {
    /// The conditioning the UNet consumes (text embeddings, pooled embeddings, time ids …).
    type Cond;

    /// One forward pass.
    fn predict(&mut self, x_in: &Tensor, timestep: f32, cond: &Self::Cond) -> Result<Tensor>;
}

/// How σ maps to the UNet's timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimestepMap {
    /// k-diffusion's `DiscreteSchedule`: log-σ interpolation over all 1000 timesteps.
    Interpolated,
    /// A1111's `LCMCompVisDenoiser`: nearest of 50 σ, timestep = index·20 + 19.
    Lcm { skip_steps: usize },
}

/// The discrete noise levels a model was trained on (k-diffusion's `DiscreteSchedule`), ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSchedule {
    alphas_cumprod: Vec<f64>,
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
    map: TimestepMap,
}

impl ModelSchedule {
    /// SD's scaled-linear schedule: β from 0.00085 to 0.012 (linear in √β) over 1000 steps.
    ///
    /// ᾱ is rounded to `f32` as the checkpoint's `alphas_cumprod` buffer is, then σ = √((1−ᾱ)/ᾱ).
    pub fn scaled_linear() -> Self {
        Self::from_alphas_cumprod(scaled_linear_alphas_cumprod())
    }

    /// A1111's LCM wrapper: every 20th ᾱ of the scaled-linear schedule (timesteps 19, 39, …, 999).
    pub fn lcm() -> Self {
        let full = scaled_linear_alphas_cumprod();
        let skip_steps = TRAINING_TIMESTEPS / LCM_ORIGINAL_STEPS;
        let alphas_cumprod = (0..LCM_ORIGINAL_STEPS).map(|i| full[i * skip_steps + skip_steps - 1]).collect();
        Self { map: TimestepMap::Lcm { skip_steps }, ..Self::from_alphas_cumprod(alphas_cumprod) }
    }

    /// A schedule from the cumulative ᾱ products, ascending in noise.
    ///
    /// σ = √((1−ᾱ)/ᾱ) and ln σ are rounded to `f32` as k-diffusion's float32 buffers are (the IEEE
    /// operations make σ bit-identical to A1111's table).
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Self {
        let sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                f64::from(((1.0 - a) / a).sqrt())
            })
            .collect();
        let log_sigmas = sigmas.iter().map(|s| f64::from(s.ln() as f32)).collect();
        Self { alphas_cumprod, sigmas, log_sigmas, map: TimestepMap::Interpolated }
    }

    /// The cumulative ᾱ products (`alphas_cumprod`), one per discrete level.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The discrete σ table, ascending.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The smallest σ (`sigmas[0]`).
    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    /// The largest σ (`sigmas[-1]`).
    pub fn sigma_max(&self) -> f64 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// The timestep for σ: log-σ linear interpolation between neighbouring levels (LCM: nearest level).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.ln();
        match self.map {
            TimestepMap::Interpolated => self.interpolated_t(log_sigma),
            TimestepMap::Lcm { skip_steps } => {
                let nearest = self.nearest_index(log_sigma);
                (nearest * skip_steps + skip_steps - 1) as f64
            }
        }
    }

    /// σ at a (fractional) timestep: log-σ linear interpolation (LCM: of the 50-level table).
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let t = match self.map {
            TimestepMap::Interpolated => t,
            TimestepMap::Lcm { skip_steps } => {
                ((t - (skip_steps - 1) as f64) / skip_steps as f64).clamp(0.0, (self.sigmas.len() - 1) as f64)
            }
        };
        let low = t.floor() as usize;
        let high = t.ceil() as usize;
        let w = t - t.floor();
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    /// The model's own schedule for `n` steps (k-diffusion `get_sigmas(n)`): timesteps uniform from the
    /// highest to the lowest, σ by interpolation, then a final 0.
    pub fn get_sigmas(&self, n: usize) -> Vec<f64> {
        let (start, end) = match self.map {
            TimestepMap::Interpolated => ((self.sigmas.len() - 1) as f64, 0.0),
            TimestepMap::Lcm { .. } => (self.sigma_to_t(self.sigma_max()), self.sigma_to_t(self.sigma_min())),
        };
        let mut sigmas: Vec<f64> = linspace(start, end, n).into_iter().map(|t| self.t_to_sigma(t)).collect();
        sigmas.push(0.0);
        sigmas
    }

    fn interpolated_t(&self, log_sigma: f64) -> f64 {
        let last = self.log_sigmas.len() - 1;
        // Index of the last level at or below log σ (0 when σ is below the table), as k-diffusion's
        // cumsum/argmax does, clamped so that `low + 1` exists.
        let at_or_below = self.log_sigmas.iter().rposition(|&l| log_sigma - l >= 0.0).unwrap_or(0);
        let low_idx = at_or_below.min(last - 1);
        let (low, high) = (self.log_sigmas[low_idx], self.log_sigmas[low_idx + 1]);
        let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
        (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
    }

    fn nearest_index(&self, log_sigma: f64) -> usize {
        let mut best = 0;
        for (i, l) in self.log_sigmas.iter().enumerate() {
            if (log_sigma - l).abs() < (log_sigma - self.log_sigmas[best]).abs() {
                best = i;
            }
        }
        best
    }
}

fn scaled_linear_alphas_cumprod() -> Vec<f64> {
    let start = BETA_START.sqrt();
    let end = BETA_END.sqrt();
    let mut product = 1.0f64;
    linspace(start, end, TRAINING_TIMESTEPS)
        .into_iter()
        .map(|root_beta| {
            product *= 1.0 - root_beta * root_beta;
            f64::from(product as f32)
        })
        .collect()
}

/// `n` evenly spaced values from `start` to `end` inclusive (torch/numpy `linspace`; `[start]` for n = 1).
pub(crate) fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n).map(|i| if i + 1 == n { end } else { start + step * i as f64 }).collect()
        }
    }
}

/// A UNet wrapped as a [`Denoiser`] over a discrete schedule, as k-diffusion's `CompVisDenoiser`
/// (ε: x0 = x − σ·ε) and `CompVisVDenoiser` (v: x0 = c_skip·x + c_out·v), or A1111's LCM wrapper.
///
/// The input is scaled by c_in = 1/√(σ²+1) and the timestep is `sigma_to_t(σ)`.
pub struct DiscreteDenoiser<M: UNetModel> {
    model: M,
    schedule: ModelSchedule,
    prediction: Prediction,
}

impl<M: UNetModel> DiscreteDenoiser<M> {
    /// Wraps `model` whose outputs mean `prediction`, on `schedule`.
    pub fn new(model: M, schedule: ModelSchedule, prediction: Prediction) -> Self {
        Self { model, schedule, prediction }
    }

    /// The discrete schedule.
    pub fn schedule(&self) -> &ModelSchedule {
        &self.schedule
    }

    /// The wrapped model.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// x0 for one conditioning.
    pub fn denoise_with(&mut self, x: &Tensor, sigma: f64, cond: &M::Cond) -> Result<Tensor> {
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let x_in = x.mapv(|v| (f64::from(v) * c_in) as f32);
        let timestep = self.schedule.sigma_to_t(sigma);
        let out = self.model.predict(&x_in, timestep as f32, cond)?;
        if out.shape() != x.shape() {
            return Err(Error::Shape {
                stage: "processing::denoise",
                tensor: "unet output",
                found: out.shape().to_vec(),
                expected: format!("{:?} (the latent's shape)", x.shape()),
            });
        }
        let mut denoised = match self.prediction {
            Prediction::Epsilon => combine(x, &out, 1.0, -sigma),
            Prediction::V => {
                let c_skip = 1.0 / (sigma * sigma + 1.0);
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                combine(x, &out, c_skip, c_out)
            }
        };
        if let TimestepMap::Lcm { .. } = self.schedule.map {
            lcm_consistency_scaling(&mut denoised, x, timestep);
        }
        Ok(denoised)
    }
}

/// LCM's boundary condition: x0 ← c_out·x0 + c_skip·x with σ_data = 0.5 and the timestep scaled by 10.
fn lcm_consistency_scaling(denoised: &mut Tensor, x: &Tensor, timestep: f64) {
    const SIGMA_DATA: f64 = 0.5;
    let scaled = timestep * 10.0;
    let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
    let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
    Zip::from(denoised).and(x).for_each(|d, &x| *d = (c_out * f64::from(*d) + c_skip * f64::from(x)) as f32);
}

/// a·x + b·y elementwise.
fn combine(x: &Tensor, y: &Tensor, a: f64, b: f64) -> Tensor {
    let mut out = x.clone();
    Zip::from(&mut out).and(y).for_each(|o, &y| *o = (a * f64::from(*o) + b * f64::from(y)) as f32);
    out
}

/// A conditioning that changes with the denoiser call counter (A1111 prompt editing): entries of
/// `(end_at_step, cond)`; the first entry whose `end_at_step ≥ step` applies.
#[derive(Debug, Clone)]
pub struct ScheduledCond<C> {
    entries: Vec<(usize, C)>,
}

impl<C> ScheduledCond<C> {
    /// One conditioning for every step.
    pub fn constant(cond: C) -> Self {
        Self { entries: vec![(usize::MAX, cond)] }
    }

    /// Entries of `(end_at_step, cond)` in ascending `end_at_step`; an empty list is an error.
    pub fn new(entries: Vec<(usize, C)>) -> Result<Self> {
        if entries.is_empty() {
            return Err(Error::InvalidParameter {
                field: "conditioning schedule",
                problem: "it has no entries; pass at least one (end_at_step, cond)".into(),
            });
        }
        Ok(Self { entries })
    }

    /// The conditioning at denoiser call `step`. Past the last entry A1111 falls back to the first one
    /// (its `reconstruct_cond_batch` starts from index 0); this mirrors that.
    pub fn at(&self, step: usize) -> &C {
        let entry = self.entries.iter().find(|(end, _)| step <= *end).unwrap_or(&self.entries[0]);
        &entry.1
    }
}

/// Classifier-free guidance over a [`DiscreteDenoiser`], as A1111's `CFGDenoiser`:
/// x0 = uncond + Σᵢ wᵢ·cfg·(condᵢ − uncond), where the wᵢ are the `AND` weights.
pub struct CfgDenoiser<M: UNetModel> {
    inner: DiscreteDenoiser<M>,
    conds: Vec<(ScheduledCond<M::Cond>, f64)>,
    uncond: ScheduledCond<M::Cond>,
    cfg_scale: f64,
    multiplier: f64,
    step: usize,
    last_uncond: Option<Tensor>,
}

impl<M: UNetModel> CfgDenoiser<M> {
    /// Guidance with `conds` (each with its AND weight), `uncond` and scale `cfg_scale`.
    pub fn new(
        inner: DiscreteDenoiser<M>,
        conds: Vec<(ScheduledCond<M::Cond>, f64)>,
        uncond: ScheduledCond<M::Cond>,
        cfg_scale: f64,
    ) -> Result<Self> {
        if conds.is_empty() {
            return Err(Error::InvalidParameter {
                field: "prompt",
                problem: "guidance needs at least one positive conditioning".into(),
            });
        }
        if !cfg_scale.is_finite() {
            return Err(Error::InvalidParameter {
                field: "cfg_scale",
                problem: format!("{cfg_scale} is not a finite number"),
            });
        }
        Ok(Self { inner, conds, uncond, cfg_scale, multiplier: 1.0, step: 0, last_uncond: None })
    }

    /// The wrapped model denoiser.
    pub fn inner(&self) -> &DiscreteDenoiser<M> {
        &self.inner
    }

    /// How many times the model has been asked (A1111's `CFGDenoiser.step`).
    pub fn calls(&self) -> usize {
        self.step
    }
}

impl<M: UNetModel> Denoiser for CfgDenoiser<M> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let step = self.step;
        let uncond = self.inner.denoise_with(x, sigma, self.uncond.at(step))?;
        let mut guided = uncond.clone();
        let scale = self.cfg_scale * self.multiplier;
        for (cond, weight) in &self.conds {
            let denoised = self.inner.denoise_with(x, sigma, cond.at(step))?;
            let w = weight * scale;
            Zip::from(&mut guided)
                .and(&denoised)
                .and(&uncond)
                .for_each(|g, &c, &u| *g = (f64::from(*g) + (f64::from(c) - f64::from(u)) * w) as f32);
        }
        self.last_uncond = Some(uncond);
        self.step += 1;
        Ok(guided)
    }

    fn last_uncond(&self) -> Option<&Tensor> {
        self.last_uncond.as_ref()
    }

    fn set_guidance_multiplier(&mut self, multiplier: f64) -> bool {
        self.multiplier = multiplier;
        true
    }
}

/// A [`DiscreteDenoiser`] with one fixed conditioning and no guidance (CFG scale 1 without negative prompt).
pub struct Unguided<M: UNetModel> {
    inner: DiscreteDenoiser<M>,
    cond: M::Cond,
}

impl<M: UNetModel> Unguided<M> {
    /// Denoises with `cond` only.
    pub fn new(inner: DiscreteDenoiser<M>, cond: M::Cond) -> Self {
        Self { inner, cond }
    }
}

impl<M: UNetModel> Denoiser for Unguided<M> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.inner.denoise_with(x, sigma, &self.cond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    /// ε-model that predicts `x_in · k + t/1000` so outputs depend on both scaling and timestep.
    struct Linear {
        k: f32,
        seen: Vec<(f32, f32)>,
    }

    impl UNetModel for Linear {
        type Cond = f32;
        fn predict(&mut self, x_in: &Tensor, timestep: f32, cond: &f32) -> Result<Tensor> {
            self.seen.push((timestep, *cond));
            Ok(x_in.mapv(|v| v * self.k + timestep / 1000.0 + cond))
        }
    }

    fn latent(v: f32) -> Tensor {
        Tensor::from_elem(IxDyn(&[1, 4, 2, 2]), v)
    }

    #[test]
    fn scaled_linear_table_matches_known_values() {
        let s = ModelSchedule::scaled_linear();
        assert_eq!(s.sigmas().len(), 1000);
        assert!((s.sigma_min() - 0.029_167_6).abs() < 1e-6, "{}", s.sigma_min());
        assert!((s.sigma_max() - 14.614_642).abs() < 1e-4, "{}", s.sigma_max());
    }

    #[test]
    fn sigma_to_t_inverts_t_to_sigma() {
        let s = ModelSchedule::scaled_linear();
        for t in [0.0, 0.5, 1.0, 17.25, 500.0, 998.5, 999.0] {
            let back = s.sigma_to_t(s.t_to_sigma(t));
            assert!((back - t).abs() < 1e-6, "{t} -> {back}");
        }
        assert_eq!(s.sigma_to_t(1e-4), 0.0, "below the table clamps to t = 0");
        assert_eq!(s.sigma_to_t(100.0), 999.0, "above the table clamps to t = 999");
    }

    #[test]
    fn lcm_schedule_maps_to_every_twentieth_timestep() {
        let s = ModelSchedule::lcm();
        assert_eq!(s.sigmas().len(), 50);
        assert_eq!(s.sigma_to_t(s.sigma_max()), 999.0);
        assert_eq!(s.sigma_to_t(s.sigma_min()), 19.0);
        let full = ModelSchedule::scaled_linear();
        assert!((s.sigma_max() - full.sigma_max()).abs() < 1e-9);
        assert!((s.t_to_sigma(519.0) / full.sigmas()[519] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn epsilon_denoiser_scales_input_and_subtracts_sigma_eps() {
        let model = Linear { k: 0.5, seen: Vec::new() };
        let mut d = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let sigma = 2.0;
        let t = d.schedule().sigma_to_t(sigma);
        let out = d.denoise_with(&latent(3.0), sigma, &0.0).unwrap();
        let eps = 3.0 / (5.0f64).sqrt() * 0.5 + t / 1000.0;
        let expected = 3.0 - sigma * eps;
        assert!((f64::from(out[[0, 0, 0, 0]]) - expected).abs() < 1e-5);
        assert!((f64::from(d.model_mut().seen[0].0) - t).abs() < 1e-3);
    }

    #[test]
    fn v_denoiser_uses_c_skip_and_c_out() {
        let model = Linear { k: 0.0, seen: Vec::new() };
        let mut d = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::V);
        let sigma = 1.5;
        let t = d.schedule().sigma_to_t(sigma);
        let out = d.denoise_with(&latent(2.0), sigma, &0.25).unwrap();
        let v = t / 1000.0 + 0.25;
        let expected = 2.0 / (sigma * sigma + 1.0) - sigma / (sigma * sigma + 1.0).sqrt() * v;
        assert!((f64::from(out[[0, 1, 1, 1]]) - expected).abs() < 1e-5);
    }

    #[test]
    fn cfg_combines_and_weights_and_keeps_uncond() {
        let model = Linear { k: 0.0, seen: Vec::new() };
        let inner = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let conds = vec![(ScheduledCond::constant(1.0), 1.0), (ScheduledCond::constant(2.0), 0.5)];
        let mut cfg = CfgDenoiser::new(inner, conds, ScheduledCond::constant(0.0), 7.0).unwrap();
        let sigma = 1.0;
        let x = latent(0.0);
        let out = cfg.denoise(&x, sigma).unwrap();
        let t = ModelSchedule::scaled_linear().sigma_to_t(sigma) / 1000.0;
        let (u, c1, c2) = (-sigma * t, -sigma * (t + 1.0), -sigma * (t + 2.0));
        let expected = u + 7.0 * (c1 - u) + 0.5 * 7.0 * (c2 - u);
        assert!((f64::from(out[[0, 0, 0, 0]]) - expected).abs() < 1e-4);
        assert!((f64::from(cfg.last_uncond().unwrap()[[0, 0, 0, 0]]) - u).abs() < 1e-6);
        assert_eq!(cfg.calls(), 1);
    }

    #[test]
    fn scheduled_cond_follows_a1111_lookup() {
        let s = ScheduledCond::new(vec![(1, "a"), (10, "b")]).unwrap();
        assert_eq!(*s.at(0), "a");
        assert_eq!(*s.at(1), "a");
        assert_eq!(*s.at(2), "b");
        assert_eq!(*s.at(10), "b");
        assert_eq!(*s.at(11), "a", "past the end A1111 uses the first entry");
        assert!(ScheduledCond::<u8>::new(Vec::new()).is_err());
    }

    #[test]
    fn wrong_output_shape_is_an_error() {
        struct Bad;
        impl UNetModel for Bad {
            type Cond = ();
            fn predict(&mut self, _x: &Tensor, _t: f32, _c: &()) -> Result<Tensor> {
                Ok(Tensor::zeros(IxDyn(&[1, 4, 1, 1])))
            }
        }
        let mut d = DiscreteDenoiser::new(Bad, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let err = d.denoise_with(&latent(1.0), 1.0, &()).unwrap_err();
        assert!(err.to_string().contains("unet output"), "{err}");
    }
}
