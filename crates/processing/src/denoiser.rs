//! The model side of sampling: the `Denoiser` trait samplers call (σ, x → x0), the discrete-σ table of
//! an SD model (k-diffusion's `DiscreteSchedule`), the UNet adapter (`CompVisDenoiser` /
//! `CompVisVDenoiser` / A1111's LCM wrapper) and classifier-free guidance with AND weights.

use ndarray::{ArrayD, Axis, Zip};

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

/// A UNet: given the scaled latent batch `x_in`, the (possibly fractional) timestep and one conditioning
/// per row of `x_in`, returns its raw prediction (ε or v) with the shape of `x_in`. Implemented for
/// `sdrt-models`' UNet in the pipeline and by test fakes.
pub trait UNetModel {
    /// The conditioning of one batch row (text embeddings, pooled embeddings …).
    type Cond;

    /// One forward pass; `conds[i]` conditions row `i` of `x_in`.
    fn predict(&mut self, x_in: &Tensor, timestep: f32, conds: &[&Self::Cond]) -> Result<Tensor>;

    /// Length of the conditioning's token axis. Guidance batches cond and uncond rows into one call only
    /// when their (padded) lengths agree, as A1111's `CFGDenoiser` does; fakes without a token axis keep 0.
    fn sequence_len(&self, _cond: &Self::Cond) -> usize {
        0
    }

    /// `cond` as guidance would batch it next to a longer conditioning (A1111's `pad_cond_uncond`): its last
    /// token vector repeated up to `stacked_len` (the length of the rows it is stacked with), then
    /// empty-prompt chunks appended up to `target_len`. `None` when the model has no empty-prompt encoding,
    /// in which case guidance falls back to separate calls.
    fn pad_with_empty(&self, _cond: &Self::Cond, _stacked_len: usize, _target_len: usize) -> Option<Self::Cond> {
        None
    }
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

    /// A model's own β schedule from its `scheduler_config.json`: `scaled` = linear in √β (SD's
    /// "scaled_linear"), otherwise linear in β. The SD defaults give [`ModelSchedule::scaled_linear`].
    pub fn from_betas(beta_start: f64, beta_end: f64, timesteps: usize, scaled: bool) -> Result<Self> {
        let valid = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !valid(beta_start) || !valid(beta_end) || timesteps < 2 {
            return Err(Error::InvalidParameter {
                field: "scheduler_config",
                problem: format!(
                    "beta_start {beta_start}, beta_end {beta_end}, num_train_timesteps {timesteps}: betas must be in \
                     (0, 1) and there must be at least 2 timesteps"
                ),
            });
        }
        Ok(Self::from_alphas_cumprod(alphas_cumprod_from_betas(beta_start, beta_end, timesteps, scaled)))
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
    alphas_cumprod_from_betas(BETA_START, BETA_END, TRAINING_TIMESTEPS, true)
}

/// ᾱ in float64 as LDM's `register_schedule` computes it, each rounded to the float32 buffer.
fn alphas_cumprod_from_betas(beta_start: f64, beta_end: f64, timesteps: usize, scaled: bool) -> Vec<f64> {
    let betas: Vec<f64> = if scaled {
        linspace(beta_start.sqrt(), beta_end.sqrt(), timesteps).into_iter().map(|r| r * r).collect()
    } else {
        linspace(beta_start, beta_end, timesteps)
    };
    let mut product = 1.0f64;
    betas
        .into_iter()
        .map(|beta| {
            product *= 1.0 - beta;
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

    /// x0 of every row of `x`, row `i` conditioned on `conds[i]`.
    pub fn denoise_with(&mut self, x: &Tensor, sigma: f64, conds: &[&M::Cond]) -> Result<Tensor> {
        self.denoise_with_image(x, sigma, conds, None)
    }

    /// [`DiscreteDenoiser::denoise_with`] for UNets that also take image conditioning (inpainting models):
    /// its rows are appended to the scaled latents on the channel axis, unscaled, as LDM's `c_concat`.
    pub fn denoise_with_image(
        &mut self,
        x: &Tensor,
        sigma: f64,
        conds: &[&M::Cond],
        image: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let mut x_in = x.mapv(|v| (f64::from(v) * c_in) as f32);
        if let Some(image) = image {
            x_in = ndarray::concatenate(Axis(1), &[x_in.view(), image.view()]).map_err(|_| Error::Shape {
                stage: "processing::denoise",
                tensor: "image conditioning",
                found: image.shape().to_vec(),
                expected: format!("[{}, channels, height, width] like the latents {:?}", x.shape()[0], x.shape()),
            })?;
        }
        let timestep = self.schedule.sigma_to_t(sigma);
        let out = self.model.predict(&x_in, timestep as f32, conds)?;
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

/// Classifier-free guidance over a [`DiscreteDenoiser`], as A1111's `CFGDenoiser`, for a batch of images:
/// x0ᵢ = uncondᵢ + Σₖ wᵢₖ·cfg·(condᵢₖ − uncondᵢ), where the wᵢₖ are image i's `AND` weights.
///
/// Every sub-prompt row and every uncond row go through the UNet in one call when their token lengths
/// agree; otherwise the cond rows and the uncond rows take a call each (A1111's default without
/// `pad_cond_uncond`).
pub struct CfgDenoiser<M: UNetModel> {
    inner: DiscreteDenoiser<M>,
    conds: Vec<Vec<(ScheduledCond<M::Cond>, f64)>>,
    unconds: Vec<ScheduledCond<M::Cond>>,
    cfg_scale: f64,
    multiplier: f64,
    step: usize,
    model_calls: usize,
    pad_cond_uncond: bool,
    last_uncond: Option<Tensor>,
    /// Per image, the inpainting model's image conditioning (`[B, 5, h, w]`), the same for cond and uncond.
    image: Option<Tensor>,
}

impl<M: UNetModel> CfgDenoiser<M> {
    /// Guidance for a batch: per image its sub-prompts (each with its AND weight) and its uncond.
    pub fn new(
        inner: DiscreteDenoiser<M>,
        conds: Vec<Vec<(ScheduledCond<M::Cond>, f64)>>,
        unconds: Vec<ScheduledCond<M::Cond>>,
        cfg_scale: f64,
    ) -> Result<Self> {
        if conds.is_empty() || conds.iter().any(Vec::is_empty) {
            return Err(Error::InvalidParameter {
                field: "prompt",
                problem: "guidance needs at least one positive conditioning per image".into(),
            });
        }
        if conds.len() != unconds.len() {
            return Err(Error::InvalidParameter {
                field: "negative_prompt",
                problem: format!(
                    "{} negative conditionings for {} images; pass one per image",
                    unconds.len(),
                    conds.len()
                ),
            });
        }
        if !cfg_scale.is_finite() {
            return Err(Error::InvalidParameter {
                field: "cfg_scale",
                problem: format!("{cfg_scale} is not a finite number"),
            });
        }
        Ok(Self {
            inner,
            conds,
            unconds,
            cfg_scale,
            multiplier: 1.0,
            step: 0,
            model_calls: 0,
            pad_cond_uncond: false,
            last_uncond: None,
            image: None,
        })
    }

    /// Image conditioning for inpainting UNets: one row per image (`[B, 5, h, w]`: mask, masked-image
    /// latents), given to every cond and uncond row of that image (A1111's `image_cond_in`).
    pub fn with_image_conditioning(mut self, image: Tensor) -> Result<Self> {
        if image.ndim() != 4 || image.shape()[0] != self.conds.len() {
            return Err(Error::Shape {
                stage: "processing::denoise",
                tensor: "image conditioning",
                found: image.shape().to_vec(),
                expected: format!("[{}, channels, height, width]: one row per image", self.conds.len()),
            });
        }
        self.image = Some(image);
        Ok(self)
    }

    /// A1111's `pad_cond_uncond` option: when cond and uncond differ in length, pad the shorter side with
    /// empty-prompt chunks so both go through one UNet call (changes the result slightly; off by default).
    pub fn with_pad_cond_uncond(mut self, pad: bool) -> Self {
        self.pad_cond_uncond = pad;
        self
    }

    /// The wrapped model denoiser.
    pub fn inner(&self) -> &DiscreteDenoiser<M> {
        &self.inner
    }

    /// How many times the sampler has asked (A1111's `CFGDenoiser.step`, the prompt-schedule counter).
    pub fn calls(&self) -> usize {
        self.step
    }

    /// How many UNet forward calls were made.
    pub fn model_calls(&self) -> usize {
        self.model_calls
    }

    fn check_batch(&self, x: &Tensor) -> Result<()> {
        if x.ndim() == 0 || x.shape()[0] != self.conds.len() {
            return Err(Error::Shape {
                stage: "processing::denoise",
                tensor: "latent",
                found: x.shape().to_vec(),
                expected: format!("a batch of {} images (one per conditioning)", self.conds.len()),
            });
        }
        Ok(())
    }
}

/// Every cond and uncond row padded to the longer side's length, or `None` when the model cannot pad.
#[allow(clippy::type_complexity, reason = "a pair of owned row lists mirroring the borrowed ones")]
fn pad_rows<M: UNetModel>(
    model: &M,
    cond_rows: &[&M::Cond],
    uncond_rows: &[&M::Cond],
    cond_len: usize,
    uncond_len: usize,
) -> Option<(Vec<M::Cond>, Vec<M::Cond>)> {
    let target = cond_len.max(uncond_len);
    let pad = |rows: &[&M::Cond], stacked: usize| -> Option<Vec<M::Cond>> {
        rows.iter().map(|row| model.pad_with_empty(row, stacked, target)).collect()
    };
    Some((pad(cond_rows, cond_len)?, pad(uncond_rows, uncond_len)?))
}

/// Rows of `x` picked by image index (`rows[j]` is the image of output row `j`).
fn gather_rows(x: &Tensor, rows: &[usize]) -> Tensor {
    x.select(Axis(0), rows)
}

impl<M: UNetModel> Denoiser for CfgDenoiser<M> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.check_batch(x)?;
        let step = self.step;
        let batch = self.conds.len();
        let cond_images: Vec<usize> =
            self.conds.iter().enumerate().flat_map(|(i, subs)| std::iter::repeat_n(i, subs.len())).collect();
        let cond_rows: Vec<&M::Cond> = self.conds.iter().flatten().map(|(c, _)| c.at(step)).collect();
        let uncond_rows: Vec<&M::Cond> = self.unconds.iter().map(|u| u.at(step)).collect();
        let model = self.inner.model_mut();
        let cond_len = cond_rows.iter().map(|c| model.sequence_len(c)).max().unwrap_or(0);
        let uncond_len = uncond_rows.iter().map(|c| model.sequence_len(c)).max().unwrap_or(0);
        let image_rows: Vec<usize> = (0..batch).collect();
        let padded = if cond_len != uncond_len && self.pad_cond_uncond {
            pad_rows(model, &cond_rows, &uncond_rows, cond_len, uncond_len)
        } else {
            None
        };
        let (cond_rows, uncond_rows): (Vec<&M::Cond>, Vec<&M::Cond>) = match &padded {
            Some((conds, unconds)) => (conds.iter().collect(), unconds.iter().collect()),
            None => (cond_rows, uncond_rows),
        };
        let (cond_out, uncond_out) = if cond_len == uncond_len || padded.is_some() {
            let all_images: Vec<usize> = cond_images.iter().chain(&image_rows).copied().collect();
            let all_conds: Vec<&M::Cond> = cond_rows.iter().chain(&uncond_rows).copied().collect();
            let image = self.image.as_ref().map(|i| gather_rows(i, &all_images));
            let out = self.inner.denoise_with_image(&gather_rows(x, &all_images), sigma, &all_conds, image.as_ref())?;
            self.model_calls += 1;
            let n = cond_rows.len();
            (out.slice_axis(Axis(0), (..n).into()).to_owned(), out.slice_axis(Axis(0), (n..).into()).to_owned())
        } else {
            let cond_image = self.image.as_ref().map(|i| gather_rows(i, &cond_images));
            let cond_out =
                self.inner.denoise_with_image(&gather_rows(x, &cond_images), sigma, &cond_rows, cond_image.as_ref())?;
            let uncond_out = self.inner.denoise_with_image(x, sigma, &uncond_rows, self.image.as_ref())?;
            self.model_calls += 2;
            (cond_out, uncond_out)
        };
        let mut guided = uncond_out.clone();
        let scale = self.cfg_scale * self.multiplier;
        let weights = self.conds.iter().flatten().map(|(_, w)| *w);
        for ((row, image), weight) in cond_out.axis_iter(Axis(0)).zip(&cond_images).zip(weights) {
            let w = weight * scale;
            Zip::from(guided.index_axis_mut(Axis(0), *image))
                .and(&row)
                .and(uncond_out.index_axis(Axis(0), *image))
                .for_each(|g, &c, &u| *g = (f64::from(*g) + (f64::from(c) - f64::from(u)) * w) as f32);
        }
        self.last_uncond = Some(uncond_out);
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

/// A [`DiscreteDenoiser`] with one fixed conditioning for every row and no guidance.
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
        let rows = vec![&self.cond; x.shape().first().copied().unwrap_or(1)];
        self.inner.denoise_with(x, sigma, &rows)
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
        fn predict(&mut self, x_in: &Tensor, timestep: f32, conds: &[&f32]) -> Result<Tensor> {
            let mut out = x_in.mapv(|v| v * self.k + timestep / 1000.0);
            for (mut row, cond) in out.axis_iter_mut(Axis(0)).zip(conds) {
                self.seen.push((timestep, **cond));
                row += **cond;
            }
            Ok(out)
        }

        fn sequence_len(&self, cond: &f32) -> usize {
            // Negative conds stand for "another token length" so tests can force separate calls.
            usize::from(*cond < 0.0)
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
    fn config_betas_reproduce_the_sd_table_and_reject_nonsense() {
        let from_config = ModelSchedule::from_betas(0.00085, 0.012, 1000, true).unwrap();
        assert_eq!(from_config, ModelSchedule::scaled_linear());
        let linear = ModelSchedule::from_betas(0.00085, 0.012, 1000, false).unwrap();
        assert!(linear.sigma_max() > from_config.sigma_max(), "linear betas add noise faster");
        assert!(ModelSchedule::from_betas(0.0, 0.012, 1000, true).is_err());
        assert!(ModelSchedule::from_betas(0.00085, 0.012, 1, true).is_err());
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
        let out = d.denoise_with(&latent(3.0), sigma, &[&0.0]).unwrap();
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
        let out = d.denoise_with(&latent(2.0), sigma, &[&0.25]).unwrap();
        let v = t / 1000.0 + 0.25;
        let expected = 2.0 / (sigma * sigma + 1.0) - sigma / (sigma * sigma + 1.0).sqrt() * v;
        assert!((f64::from(out[[0, 1, 1, 1]]) - expected).abs() < 1e-5);
    }

    #[test]
    fn cfg_combines_and_weights_and_keeps_uncond() {
        let model = Linear { k: 0.0, seen: Vec::new() };
        let inner = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let conds = vec![vec![(ScheduledCond::constant(1.0), 1.0), (ScheduledCond::constant(2.0), 0.5)]];
        let mut cfg = CfgDenoiser::new(inner, conds, vec![ScheduledCond::constant(0.0)], 7.0).unwrap();
        let sigma = 1.0;
        let x = latent(0.0);
        let out = cfg.denoise(&x, sigma).unwrap();
        let t = ModelSchedule::scaled_linear().sigma_to_t(sigma) / 1000.0;
        let (u, c1, c2) = (-sigma * t, -sigma * (t + 1.0), -sigma * (t + 2.0));
        let expected = u + 7.0 * (c1 - u) + 0.5 * 7.0 * (c2 - u);
        assert!((f64::from(out[[0, 0, 0, 0]]) - expected).abs() < 1e-4);
        assert!((f64::from(cfg.last_uncond().unwrap()[[0, 0, 0, 0]]) - u).abs() < 1e-6);
        assert_eq!(cfg.calls(), 1);
        assert_eq!(cfg.model_calls(), 1, "equal token lengths share one UNet call");
    }

    #[test]
    fn cfg_batches_per_image_and_splits_calls_when_lengths_differ() {
        let model = Linear { k: 0.0, seen: Vec::new() };
        let inner = DiscreteDenoiser::new(model, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let conds = vec![vec![(ScheduledCond::constant(1.0), 1.0)], vec![(ScheduledCond::constant(3.0), 1.0)]];
        let unconds = vec![ScheduledCond::constant(-1.0), ScheduledCond::constant(-2.0)];
        let mut cfg = CfgDenoiser::new(inner, conds, unconds, 2.0).unwrap();
        let x = Tensor::zeros(IxDyn(&[2, 4, 2, 2]));
        let out = cfg.denoise(&x, 1.0).unwrap();
        assert_eq!(cfg.model_calls(), 2, "uncond of another token length takes its own call");
        let t = ModelSchedule::scaled_linear().sigma_to_t(1.0) / 1000.0;
        for (image, (c, u)) in [(1.0, -1.0), (3.0, -2.0)].into_iter().enumerate() {
            let (dc, du) = (-(t + c), -(t + u));
            let expected = du + 2.0 * (dc - du);
            assert!((f64::from(out[[image, 0, 0, 0]]) - expected).abs() < 1e-4, "image {image}");
        }
        let wrong = Tensor::zeros(IxDyn(&[3, 4, 2, 2]));
        assert!(cfg.denoise(&wrong, 1.0).is_err(), "a batch that does not match the conditionings is an error");
    }

    /// A fake whose conds are (value, token length) and which pads by appending "empty" length.
    struct Padding;

    impl UNetModel for Padding {
        type Cond = (f32, usize);
        fn predict(&mut self, x_in: &Tensor, _t: f32, conds: &[&(f32, usize)]) -> Result<Tensor> {
            let len = conds[0].1;
            assert!(conds.iter().all(|c| c.1 == len), "one call gets rows of one length");
            let mut out = x_in.clone();
            for (mut row, cond) in out.axis_iter_mut(Axis(0)).zip(conds) {
                row += cond.0 + cond.1 as f32 * 0.001;
            }
            Ok(out)
        }
        fn sequence_len(&self, cond: &(f32, usize)) -> usize {
            cond.1
        }
        fn pad_with_empty(&self, cond: &(f32, usize), _stacked: usize, target: usize) -> Option<(f32, usize)> {
            Some((cond.0, target))
        }
    }

    #[test]
    fn pad_cond_uncond_shares_one_call_and_is_off_by_default() {
        let run = |pad: bool| {
            let inner = DiscreteDenoiser::new(Padding, ModelSchedule::scaled_linear(), Prediction::Epsilon);
            let conds = vec![vec![(ScheduledCond::constant((1.0, 154)), 1.0)]];
            let mut cfg = CfgDenoiser::new(inner, conds, vec![ScheduledCond::constant((0.0, 77))], 7.0)
                .unwrap()
                .with_pad_cond_uncond(pad);
            let out = cfg.denoise(&latent(0.0), 1.0).unwrap();
            (cfg.model_calls(), out[[0, 0, 0, 0]])
        };
        let (separate, unpadded) = run(false);
        let (shared, padded) = run(true);
        assert_eq!((separate, shared), (2, 1));
        assert_ne!(unpadded, padded, "the padded uncond sees the longer conditioning");
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
            fn predict(&mut self, _x: &Tensor, _t: f32, _c: &[&()]) -> Result<Tensor> {
                Ok(Tensor::zeros(IxDyn(&[1, 4, 1, 1])))
            }
        }
        let mut d = DiscreteDenoiser::new(Bad, ModelSchedule::scaled_linear(), Prediction::Epsilon);
        let err = d.denoise_with(&latent(1.0), 1.0, &[&()]).unwrap_err();
        assert!(err.to_string().contains("unet output"), "{err}");
    }
}
