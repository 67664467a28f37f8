//! A1111's samplers (k-diffusion functions, the timestep samplers DDIM / DDIM CFG++ / PLMS / UniPC, and
//! LCM) over a [`Denoiser`], with A1111's names, defaults, txt2img and img2img entry points, progress
//! and cancellation hooks.

mod dpm_solver;
mod kdiffusion;
mod ops;
mod table;
mod timesteps;
mod unipc;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::denoiser::{Denoiser, Tensor};
use crate::error::{Error, Result};
use crate::model_schedule::ModelSchedule;
use crate::schedules::{self, Schedule, ScheduleOptions};

pub use table::SamplerKind;
pub use unipc::{UniPcOptions, UniPcSkip, UniPcVariant};

const STAGE: &str = "processing::sample";

/// Where ancestral / SDE / churn noise comes from. A1111 takes it from the image seeds' stream (and, for
/// the SDE samplers, from a Brownian tree keyed by σ); fixtures replay recorded noise.
pub trait NoiseSource {
    /// Standard normal noise shaped like `like`, for the step from `sigma` to `sigma_next`.
    fn noise(&mut self, sigma: f64, sigma_next: f64, like: &Tensor) -> Result<Tensor>;
}

/// What the step callback sees.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// 0-based step index as the sampler reports it.
    pub step: usize,
    /// The number of steps the sampler is expected to report.
    pub total: usize,
    /// σ of the step (0 for the timestep samplers, as A1111).
    pub sigma: f64,
    /// The latent the sampler holds at this step.
    pub x: &'a Tensor,
    /// The current x0 prediction (what A1111 previews and returns on interrupt).
    pub denoised: &'a Tensor,
}

/// Progress and cancellation hooks.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called once per step with the current latent and x0 prediction.
    pub on_step: Option<&'a mut dyn FnMut(&StepEvent<'_>)>,
    /// Checked before every model call; when set, sampling stops and returns the last x0 prediction.
    pub cancel: Option<&'a AtomicBool>,
}

/// The outcome of a sampling run.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The final latent, or the last x0 prediction when interrupted (the start latent if none yet).
    pub latent: Tensor,
    /// Whether the cancel flag stopped sampling.
    pub interrupted: bool,
}

/// Sampler knobs A1111 exposes (`eta`, `s_churn`, `s_tmin`, `s_tmax`, `s_noise`, UniPC settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// Ancestral / SDE noise amount; `None` = A1111's default (1 for k-diffusion samplers, 0 for DDIM).
    pub eta: Option<f64>,
    /// Churn of Euler / Heun / DPM2.
    pub s_churn: f64,
    /// Lowest σ that gets churn.
    pub s_tmin: f64,
    /// Highest σ that gets churn (`f64::INFINITY` = no limit; A1111 maps 0 to that).
    pub s_tmax: f64,
    /// Noise multiplier, honoured by the samplers A1111 passes it to.
    pub s_noise: f64,
    /// UniPC's settings.
    pub unipc: UniPcOptions,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            eta: None,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
            unipc: UniPcOptions::default(),
        }
    }
}

impl SamplerParams {
    fn validate(&self) -> Result<()> {
        let finite_non_negative = |field: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::InvalidParameter { field, problem: format!("{v} must be a finite number ≥ 0") })
            }
        };
        if let Some(eta) = self.eta {
            finite_non_negative("eta", eta)?;
        }
        finite_non_negative("s_churn", self.s_churn)?;
        finite_non_negative("s_tmin", self.s_tmin)?;
        finite_non_negative("s_noise", self.s_noise)?;
        if self.s_tmax.is_nan() || self.s_tmax < 0.0 {
            return Err(Error::InvalidParameter {
                field: "s_tmax",
                problem: format!("{} must be ≥ 0 (0 or infinity = no limit)", self.s_tmax),
            });
        }
        self.unipc.validate()
    }

    fn s_tmax(&self) -> f64 {
        if self.s_tmax == 0.0 { f64::INFINITY } else { self.s_tmax }
    }
}

/// A sampler with its schedule and settings, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    kind: SamplerKind,
    schedule: Schedule,
    options: ScheduleOptions,
    params: SamplerParams,
}

impl Sampler {
    /// A sampler; `Schedule::Automatic` is resolved to the sampler's default.
    pub fn new(kind: SamplerKind, schedule: Schedule, options: ScheduleOptions, params: SamplerParams) -> Result<Self> {
        params.validate()?;
        let schedule = kind.resolve_schedule(schedule);
        Ok(Self { kind, schedule, options, params })
    }

    /// A sampler from A1111 names: `sampler` may be a label, alias or legacy combined name
    /// ("DPM++ 2M Karras"); `scheduler` (label, name or alias; `None` = Automatic) applies unless the
    /// legacy name carried one.
    pub fn from_names(sampler: &str, scheduler: Option<&str>, params: SamplerParams) -> Result<Self> {
        let (kind, legacy) = SamplerKind::parse_with_schedule(sampler)?;
        let schedule = match (legacy, scheduler) {
            (Some(s), _) => s,
            (None, Some(name)) => Schedule::from_name(name)?,
            (None, None) => Schedule::Automatic,
        };
        Self::new(kind, schedule, ScheduleOptions::default(), params)
    }

    /// Replaces the schedule options (σ range, ρ, Beta shape, AYS table).
    pub fn with_options(mut self, options: ScheduleOptions) -> Self {
        self.options = options;
        self
    }

    /// The sampler.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The resolved schedule (never `Automatic` unless the sampler's default is the model's own).
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The σ sequence for `steps` as A1111's `get_sigmas`: the schedule for steps (+1 when the sampler
    /// discards the penultimate σ, which is then dropped).
    pub fn sigmas(&self, steps: usize, model: &ModelSchedule) -> Result<Vec<f64>> {
        let discard = self.kind.discards_penultimate_sigma();
        let mut sigmas = schedules::sigmas(self.schedule, steps + usize::from(discard), model, &self.options)?;
        if discard && sigmas.len() >= 2 {
            sigmas.remove(sigmas.len() - 2);
        }
        Ok(sigmas)
    }

    /// The σ of the model's last call in a pass over a schedule of `steps` (txt2img, or img2img's tail of it):
    /// the smallest σ the sampler evaluates at (DDIM and PLMS: their second timestep's, the first being only the
    /// step's target). Second-order samplers may call the model there twice. `None` where the last call's σ
    /// depends on more than the schedule: UniPC (its own time grid and final-step options), DPM fast and
    /// adaptive (they step between the schedule's levels).
    pub fn last_sigma(&self, steps: usize, model: &ModelSchedule) -> Result<Option<f64>> {
        match self.kind {
            SamplerKind::UniPc | SamplerKind::DpmFast | SamplerKind::DpmAdaptive => Ok(None),
            kind if kind.is_timestep_sampler() => {
                let ts = timesteps::a1111_timesteps(steps + usize::from(kind.discards_penultimate_sigma()));
                Ok(ts.get(1).map(|&t| model.t_to_sigma(t as f64)))
            }
            _ => Ok(self.sigmas(steps, model)?.into_iter().filter(|s| *s > 0.0).reduce(f64::min)),
        }
    }

    /// txt2img: starts from `noise`·σ₀ (timestep samplers: from `noise`) and samples `steps` steps.
    pub fn txt2img(
        &self,
        model: &ModelSchedule,
        denoiser: &mut dyn Denoiser,
        noise_source: &mut dyn NoiseSource,
        noise: &Tensor,
        steps: usize,
        hooks: Hooks<'_>,
    ) -> Result<Sampled> {
        let _span = tracing::info_span!("processing::sample", sampler = self.kind.label(), steps).entered();
        check_steps(steps)?;
        if self.kind.is_timestep_sampler() {
            let ts = timesteps::a1111_timesteps(steps + usize::from(self.kind.discards_penultimate_sigma()));
            return self.sample_timesteps(model, denoiser, noise_source, noise.clone(), &ts, false, hooks);
        }
        let sigmas = self.sigmas(steps, model)?;
        let x = noise.mapv(|v| (f64::from(v) * sigmas[0]) as f32);
        let range = DpmRange { sigma_min: model.sigma_min(), sigma_max: model.sigma_max(), n: steps };
        self.run_sigmas(denoiser, noise_source, x, &sigmas, range, hooks)
    }

    /// img2img as A1111 (`setup_img2img_steps`): t_enc = ⌊min(strength, 0.999)·steps⌋, then the last
    /// t_enc + 1 σ of the `steps` schedule, starting from `init_latent + noise·σ` (timestep samplers:
    /// √ᾱ·init + √(1−ᾱ)·noise at the first used timestep).
    #[allow(clippy::too_many_arguments)]
    pub fn img2img(
        &self,
        model: &ModelSchedule,
        denoiser: &mut dyn Denoiser,
        noise_source: &mut dyn NoiseSource,
        init_latent: &Tensor,
        noise: &Tensor,
        steps: Img2ImgSteps,
        hooks: Hooks<'_>,
    ) -> Result<Sampled> {
        let Img2ImgSteps { total: steps, t_enc } = steps;
        let _span =
            tracing::info_span!("processing::sample", sampler = self.kind.label(), steps, t_enc, img2img = true)
                .entered();
        check_steps(steps)?;
        if init_latent.shape() != noise.shape() {
            return Err(Error::Shape {
                stage: STAGE,
                tensor: "noise",
                found: noise.shape().to_vec(),
                expected: format!("{:?} (the init latent's shape)", init_latent.shape()),
            });
        }
        if self.kind.is_timestep_sampler() {
            let ts = timesteps::a1111_timesteps(steps + usize::from(self.kind.discards_penultimate_sigma()));
            let a = model.alphas_cumprod()[ts[t_enc]];
            let x = ops::lin2(a.sqrt(), init_latent, (1.0 - a).sqrt(), noise);
            return self.sample_timesteps(model, denoiser, noise_source, x, &ts[..t_enc], true, hooks);
        }
        let sigmas = self.sigmas(steps, model)?;
        let used = &sigmas[steps - t_enc - 1..];
        let x = ops::lin2(1.0, init_latent, used[0], noise);
        let range = DpmRange { sigma_min: used[used.len() - 2], sigma_max: used[0], n: used.len() - 1 };
        self.run_sigmas(denoiser, noise_source, x, used, range, hooks)
    }

    /// Refuses a pass this sampler cannot run, before any model work, so callers can name the field:
    /// timestep samplers need at least one timestep (img2img runs `t_enc` of them), UniPC at least its order.
    pub fn check_runnable(&self, steps: usize, img2img: Option<Img2ImgSteps>) -> Result<()> {
        if !self.kind.is_timestep_sampler() {
            return Ok(());
        }
        let runs = img2img.map_or(steps, |s| s.t_enc);
        let needed = if self.kind == SamplerKind::UniPc { self.params.unipc.order } else { 1 };
        if runs >= needed {
            return Ok(());
        }
        Err(Error::InvalidParameter {
            field: "steps",
            problem: format!(
                "{} would sample {runs} timestep(s) here and needs at least {needed}; raise the steps (or the \
                 denoising strength)",
                self.kind.label()
            ),
        })
    }

    /// Runs a σ-based sampler on an explicit σ sequence from `x` (already scaled to σ₀). DPM fast /
    /// adaptive integrate from the first to the last non-zero σ in `sigmas.len() − 1` evaluations.
    pub fn sample_sigmas(
        &self,
        denoiser: &mut dyn Denoiser,
        noise_source: &mut dyn NoiseSource,
        x: Tensor,
        sigmas: &[f64],
        hooks: Hooks<'_>,
    ) -> Result<Sampled> {
        check_sigma_sequence(sigmas)?;
        let range = DpmRange { sigma_min: sigmas[sigmas.len() - 2], sigma_max: sigmas[0], n: sigmas.len() - 1 };
        self.run_sigmas(denoiser, noise_source, x, sigmas, range, hooks)
    }

    /// Runs a timestep sampler (DDIM, DDIM CFG++, PLMS, UniPC) over ascending discrete `timesteps` from
    /// the variance-preserving latent `x`; `img2img` selects UniPC's img2img start.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_timesteps(
        &self,
        model: &ModelSchedule,
        denoiser: &mut dyn Denoiser,
        noise_source: &mut dyn NoiseSource,
        x: Tensor,
        timesteps: &[usize],
        img2img: bool,
        hooks: Hooks<'_>,
    ) -> Result<Sampled> {
        if let Some(&bad) = timesteps.iter().find(|&&t| t >= model.sigmas().len()) {
            return Err(Error::InvalidParameter {
                field: "timesteps",
                problem: format!("timestep {bad} is outside the model's {} levels", model.sigmas().len()),
            });
        }
        if timesteps.is_empty() {
            return Err(Error::InvalidParameter { field: "steps", problem: "no timesteps to sample".into() });
        }
        let mut ctx = Ctx::new(denoiser, noise_source, hooks, timesteps.len().saturating_sub(1), &x);
        let eta = self.params.eta.unwrap_or(0.0);
        let result = match self.kind {
            SamplerKind::Ddim => timesteps::ddim(&mut ctx, model, x, timesteps, eta, false),
            SamplerKind::DdimCfgPp => timesteps::ddim(&mut ctx, model, x, timesteps, eta, true),
            SamplerKind::Plms => timesteps::plms(&mut ctx, model, x, timesteps),
            SamplerKind::UniPc => {
                ctx.total = timesteps.len();
                unipc::sample(&mut ctx, model, x, timesteps, img2img, &self.params.unipc)
            }
            other => Err(Error::InvalidParameter {
                field: "sampler",
                problem: format!("{} samples over sigmas, not timesteps; use sample_sigmas", other.label()),
            }),
        };
        ctx.finish(result)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_sigmas(
        &self,
        denoiser: &mut dyn Denoiser,
        noise_source: &mut dyn NoiseSource,
        x: Tensor,
        sigmas: &[f64],
        range: DpmRange,
        hooks: Hooks<'_>,
    ) -> Result<Sampled> {
        if self.kind.is_timestep_sampler() {
            return Err(Error::InvalidParameter {
                field: "sampler",
                problem: format!("{} samples over timesteps, not sigmas; use sample_timesteps", self.kind.label()),
            });
        }
        let mut ctx = Ctx::new(denoiser, noise_source, hooks, sigmas.len().saturating_sub(1), &x);
        let eta = self.params.eta.unwrap_or(1.0);
        let p = &self.params;
        let s_noise = if self.kind.honours_s_noise() { p.s_noise } else { 1.0 };
        let churn = kdiffusion::Churn { s_churn: p.s_churn, s_tmin: p.s_tmin, s_tmax: p.s_tmax(), s_noise };
        use SamplerKind as K;
        let result = match self.kind {
            K::Euler => kdiffusion::euler(&mut ctx, x, sigmas, churn),
            K::EulerA => kdiffusion::euler_ancestral(&mut ctx, x, sigmas, eta, s_noise),
            K::Heun => kdiffusion::heun(&mut ctx, x, sigmas, churn),
            K::Lms => kdiffusion::lms(&mut ctx, x, sigmas),
            K::Dpm2 => kdiffusion::dpm_2(&mut ctx, x, sigmas, churn),
            K::Dpm2A => kdiffusion::dpm_2_ancestral(&mut ctx, x, sigmas, eta, s_noise),
            K::DpmPp2SA => kdiffusion::dpmpp_2s_ancestral(&mut ctx, x, sigmas, eta, s_noise),
            K::DpmPp2M => kdiffusion::dpmpp_2m(&mut ctx, x, sigmas),
            K::DpmPpSde => kdiffusion::dpmpp_sde(&mut ctx, x, sigmas, eta, s_noise),
            K::DpmPp2MSde => kdiffusion::dpmpp_2m_sde(&mut ctx, x, sigmas, eta, s_noise, false),
            K::DpmPp2MSdeHeun => kdiffusion::dpmpp_2m_sde(&mut ctx, x, sigmas, eta, s_noise, true),
            K::DpmPp3MSde => kdiffusion::dpmpp_3m_sde(&mut ctx, x, sigmas, eta, s_noise),
            K::Restart => kdiffusion::restart(&mut ctx, x, sigmas, s_noise),
            K::Lcm => kdiffusion::lcm(&mut ctx, x, sigmas),
            K::DpmFast => {
                ctx.total = range.n;
                dpm_solver::fast(&mut ctx, x, range.sigma_min, range.sigma_max, range.n, eta, s_noise)
            }
            K::DpmAdaptive => dpm_solver::adaptive(&mut ctx, x, range.sigma_min, range.sigma_max, eta, s_noise),
            K::Ddim | K::DdimCfgPp | K::Plms | K::UniPc => unreachable_timestep(self.kind),
        };
        ctx.finish(result)
    }
}

fn unreachable_timestep(kind: SamplerKind) -> Result<Tensor> {
    Err(Error::InvalidParameter { field: "sampler", problem: format!("{} is a timestep sampler", kind.label()) })
}

/// The σ range DPM fast / adaptive integrate over and DPM fast's evaluation count.
#[derive(Debug, Clone, Copy)]
struct DpmRange {
    sigma_min: f64,
    sigma_max: f64,
    n: usize,
}

fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::InvalidParameter { field: "steps", problem: "must be at least 1".into() });
    }
    Ok(())
}

fn check_sigma_sequence(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(Error::InvalidParameter {
            field: "sigmas",
            problem: format!("need at least 2 values (start and end), got {}", sigmas.len()),
        });
    }
    if let Some(bad) = sigmas.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
        return Err(Error::InvalidParameter { field: "sigmas", problem: format!("{bad} is not a finite σ ≥ 0") });
    }
    Ok(())
}

/// How much of a schedule img2img runs: the schedule's length and `t_enc`, the number of steps taken from
/// its tail (A1111's `setup_img2img_steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Img2ImgSteps {
    /// Steps the σ schedule is built for.
    pub total: usize,
    /// Steps actually run, counted from the end of the schedule (`t_enc + 1` model steps for σ samplers).
    pub t_enc: usize,
}

impl Img2ImgSteps {
    /// A1111's default: a schedule of `steps`, of which ⌊min(strength, 0.999)·steps⌋ are run.
    pub fn from_strength(steps: usize, denoising_strength: f64) -> Result<Self> {
        check_strength(denoising_strength)?;
        Ok(Self { total: steps, t_enc: (denoising_strength.min(0.999) * steps as f64) as usize })
    }

    /// A1111's fix-steps branch (the hires pass, or `img2img_fix_steps`): a longer schedule,
    /// ⌊steps / min(strength, 0.999)⌋, of which exactly `steps` denoising steps run.
    pub fn exactly(steps: usize, denoising_strength: f64) -> Result<Self> {
        check_strength(denoising_strength)?;
        if denoising_strength == 0.0 || steps == 0 {
            return Err(Error::InvalidParameter {
                field: "denoising_strength",
                problem: "0 leaves nothing to denoise in a pass that runs a fixed number of steps; use a value > 0"
                    .into(),
            });
        }
        Ok(Self { total: (steps as f64 / denoising_strength.min(0.999)) as usize, t_enc: steps - 1 })
    }
}

fn check_strength(denoising_strength: f64) -> Result<()> {
    if (0.0..=1.0).contains(&denoising_strength) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            field: "denoising_strength",
            problem: format!("{denoising_strength} must be within 0..=1"),
        })
    }
}

/// The running state every sampler shares: the denoiser, the noise, hooks and the last x0 prediction.
pub(crate) struct Ctx<'a, 'h> {
    denoiser: &'a mut dyn Denoiser,
    noise_source: &'a mut dyn NoiseSource,
    hooks: Hooks<'h>,
    pub(crate) total: usize,
    model_calls: usize,
    last_denoised: Tensor,
}

impl<'a, 'h> Ctx<'a, 'h> {
    fn new(
        denoiser: &'a mut dyn Denoiser,
        noise_source: &'a mut dyn NoiseSource,
        hooks: Hooks<'h>,
        total: usize,
        start: &Tensor,
    ) -> Self {
        Self { denoiser, noise_source, hooks, total, model_calls: 0, last_denoised: start.clone() }
    }

    /// One model call, after checking the cancel flag.
    pub(crate) fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if self.hooks.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted { stage: STAGE, step: self.model_calls });
        }
        self.model_calls += 1;
        self.denoiser.denoise(x, sigma)
    }

    pub(crate) fn denoiser(&mut self) -> &mut dyn Denoiser {
        &mut *self.denoiser
    }

    pub(crate) fn noise(&mut self, sigma: f64, sigma_next: f64, like: &Tensor) -> Result<Tensor> {
        let noise = self.noise_source.noise(sigma, sigma_next, like)?;
        if noise.shape() != like.shape() {
            return Err(Error::Shape {
                stage: STAGE,
                tensor: "sampler noise",
                found: noise.shape().to_vec(),
                expected: format!("{:?} (the latent's shape)", like.shape()),
            });
        }
        Ok(noise)
    }

    /// Reports a step to the callback and remembers its x0 prediction.
    pub(crate) fn step(&mut self, step: usize, sigma: f64, x: &Tensor, denoised: &Tensor) {
        self.last_denoised.clone_from(denoised);
        if let Some(cb) = self.hooks.on_step.as_mut() {
            cb(&StepEvent { step, total: self.total, sigma, x, denoised });
        }
    }

    fn finish(self, result: Result<Tensor>) -> Result<Sampled> {
        match result {
            Ok(latent) => Ok(Sampled { latent, interrupted: false }),
            Err(Error::Interrupted { .. }) => {
                tracing::info!(calls = self.model_calls, "sampling interrupted; returning the last x0 prediction");
                Ok(Sampled { latent: self.last_denoised, interrupted: true })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Fakes shared by the sampler unit tests.
    use super::*;

    /// x0 = x·0.5/(σ²+1) + 0.1: smooth, σ-dependent, cheap.
    pub(crate) struct Shrink {
        pub(crate) calls: usize,
    }

    impl Denoiser for Shrink {
        fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
            self.calls += 1;
            Ok(x.mapv(|v| (f64::from(v) * 0.5 / (sigma * sigma + 1.0) + 0.1) as f32))
        }
    }

    /// Deterministic pseudo-noise (a fixed pattern scaled by the call count).
    pub(crate) struct Pattern {
        pub(crate) calls: usize,
    }

    impl NoiseSource for Pattern {
        fn noise(&mut self, _s: f64, _n: f64, like: &Tensor) -> Result<Tensor> {
            self.calls += 1;
            let k = self.calls as f32;
            let mut i = 0.0f32;
            Ok(like.mapv(|_| {
                i += 1.0;
                ((i * 0.37 + k).sin()) * 1.3
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Pattern, Shrink};
    use super::*;
    use ndarray::IxDyn;

    fn start() -> Tensor {
        Tensor::from_shape_fn(IxDyn(&[1, 4, 4, 4]), |i| (i[1] * 16 + i[2] * 4 + i[3]) as f32 * 0.05 - 1.5)
    }

    #[test]
    fn every_sampler_runs_txt2img_and_img2img_to_finite_latents() {
        let model = ModelSchedule::scaled_linear();
        for kind in SamplerKind::ALL {
            let model = if kind == SamplerKind::Lcm { ModelSchedule::lcm() } else { model.clone() };
            let sampler =
                Sampler::new(kind, Schedule::Automatic, ScheduleOptions::default(), SamplerParams::default()).unwrap();
            let mut d = Shrink { calls: 0 };
            let mut n = Pattern { calls: 0 };
            if kind == SamplerKind::DdimCfgPp {
                let err = sampler.txt2img(&model, &mut d, &mut n, &start(), 8, Hooks::default()).unwrap_err();
                assert!(err.to_string().contains("classifier-free"), "{err}");
                continue;
            }
            let out = sampler.txt2img(&model, &mut d, &mut n, &start(), 8, Hooks::default()).unwrap();
            assert!(!out.interrupted);
            assert!(out.latent.iter().all(|v| v.is_finite()), "{kind:?}");
            assert!(d.calls >= 3, "{kind:?} made {} calls", d.calls);
            let init = start().mapv(|v| v * 0.1);
            let steps = Img2ImgSteps::from_strength(10, 0.5).unwrap();
            let out = sampler.img2img(&model, &mut d, &mut n, &init, &start(), steps, Hooks::default()).unwrap();
            assert!(out.latent.iter().all(|v| v.is_finite()), "{kind:?} img2img");
        }
    }

    /// Records the σ of every call.
    struct Recording {
        sigmas: Vec<f64>,
    }

    impl Denoiser for Recording {
        fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
            self.sigmas.push(sigma);
            Ok(x.mapv(|v| (f64::from(v) * 0.5 / (sigma * sigma + 1.0) + 0.1) as f32))
        }
        fn set_guidance_multiplier(&mut self, _multiplier: f64) -> bool {
            true
        }
    }

    #[test]
    fn the_last_model_call_is_at_the_last_sigma() {
        let model = ModelSchedule::scaled_linear();
        // DDIM CFG++ runs DDIM's loop (and needs an unconditional prediction this fake does not make).
        for kind in SamplerKind::ALL.into_iter().filter(|k| *k != SamplerKind::DdimCfgPp) {
            let sampler =
                Sampler::new(kind, Schedule::Automatic, ScheduleOptions::default(), SamplerParams::default()).unwrap();
            for img2img in [None, Some(Img2ImgSteps::from_strength(10, 0.5).unwrap())] {
                let mut d = Recording { sigmas: Vec::new() };
                let mut n = Pattern { calls: 0 };
                let steps = img2img.map_or(8, |s| s.total);
                match img2img {
                    None => sampler.txt2img(&model, &mut d, &mut n, &start(), steps, Hooks::default()).unwrap(),
                    Some(s) => {
                        let init = start().mapv(|v| v * 0.1);
                        sampler.img2img(&model, &mut d, &mut n, &init, &start(), s, Hooks::default()).unwrap()
                    }
                };
                let Some(last) = sampler.last_sigma(steps, &model).unwrap() else {
                    assert!(matches!(kind, SamplerKind::UniPc | SamplerKind::DpmFast | SamplerKind::DpmAdaptive));
                    continue;
                };
                let at_last = |s: f64| s <= last * (1.0 + 1e-9);
                let final_call = *d.sigmas.last().unwrap();
                assert!(at_last(final_call), "{kind:?} {img2img:?}: last call at σ {final_call}, expected {last}");
                let calls_there = d.sigmas.iter().filter(|s| at_last(**s)).count();
                assert!(calls_there <= 2, "{kind:?} {img2img:?}: {calls_there} calls at σ ≤ {last}: {:?}", d.sigmas);
            }
        }
    }

    /// A denoiser whose predictions swing wildly (like CFG 1e30): DPM adaptive must give up, not loop forever.
    struct Wild {
        calls: usize,
    }

    impl Denoiser for Wild {
        fn denoise(&mut self, x: &Tensor, _sigma: f64) -> Result<Tensor> {
            self.calls += 1;
            let sign = if self.calls.is_multiple_of(2) { 1.0 } else { -1.0 };
            Ok(x.mapv(|v| v + sign * 1e30))
        }
    }

    #[test]
    fn dpm_adaptive_gives_up_when_it_cannot_converge() {
        let model = ModelSchedule::scaled_linear();
        let sampler = Sampler::from_names("DPM adaptive", None, SamplerParams::default()).unwrap();
        let mut d = Wild { calls: 0 };
        let err =
            sampler.txt2img(&model, &mut d, &mut Pattern { calls: 0 }, &start(), 10, Hooks::default()).unwrap_err();
        assert!(err.to_string().contains("did not converge"), "{err}");
        assert!(d.calls <= 3 * 1000 + 3, "bounded model calls: {}", d.calls);
    }

    #[test]
    fn cancel_returns_last_denoised_and_stops_model_calls() {
        let model = ModelSchedule::scaled_linear();
        let sampler = Sampler::from_names("Euler", None, SamplerParams::default()).unwrap();
        let cancel = AtomicBool::new(false);
        let mut seen = Vec::new();
        let mut last = None;
        let mut on_step = |e: &StepEvent<'_>| {
            seen.push((e.step, e.total));
            last = Some(e.denoised.clone());
            if e.step == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        };
        let mut d = Shrink { calls: 0 };
        let hooks = Hooks { on_step: Some(&mut on_step), cancel: Some(&cancel) };
        let out = sampler.txt2img(&model, &mut d, &mut Pattern { calls: 0 }, &start(), 10, hooks).unwrap();
        assert!(out.interrupted);
        assert_eq!(d.calls, 3);
        assert_eq!(seen, vec![(0, 10), (1, 10), (2, 10)]);
        assert_eq!(Some(out.latent), last);
    }

    #[test]
    fn discard_penultimate_drops_the_next_to_last_sigma() {
        let model = ModelSchedule::scaled_linear();
        let dpm2 = Sampler::from_names("DPM2", None, SamplerParams::default()).unwrap();
        let full = schedules::sigmas(Schedule::Karras, 11, &model, &ScheduleOptions::default()).unwrap();
        let s = dpm2.sigmas(10, &model).unwrap();
        assert_eq!(s.len(), 11);
        assert_eq!(s[9], full[9]);
        assert_eq!(s[10], 0.0);
    }

    #[test]
    fn img2img_uses_the_tail_of_the_schedule() {
        assert_eq!(Img2ImgSteps::from_strength(20, 0.75).unwrap().t_enc, 15);
        assert_eq!(Img2ImgSteps::from_strength(20, 1.0).unwrap().t_enc, 19);
        assert_eq!(Img2ImgSteps::exactly(20, 0.7).unwrap(), Img2ImgSteps { total: 28, t_enc: 19 });
        assert!(Img2ImgSteps::exactly(20, 0.0).is_err());
        let model = ModelSchedule::scaled_linear();
        let sampler = Sampler::from_names("Euler", None, SamplerParams::default()).unwrap();
        let mut sigmas_seen = Vec::new();
        struct Record<'a>(&'a mut Vec<f64>);
        impl Denoiser for Record<'_> {
            fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
                self.0.push(sigma);
                Ok(x.clone())
            }
        }
        let init = start();
        let zero = Tensor::zeros(init.raw_dim());
        sampler
            .img2img(
                &model,
                &mut Record(&mut sigmas_seen),
                &mut Pattern { calls: 0 },
                &init,
                &zero,
                Img2ImgSteps::from_strength(20, 0.5).unwrap(),
                Hooks::default(),
            )
            .unwrap();
        let full = sampler.sigmas(20, &model).unwrap();
        assert_eq!(sigmas_seen, full[20 - 10 - 1..full.len() - 1].to_vec());
    }

    #[test]
    fn bad_parameters_are_errors() {
        let bad = SamplerParams { s_noise: f64::NAN, ..Default::default() };
        assert!(Sampler::from_names("Euler", None, bad).unwrap_err().to_string().contains("s_noise"));
        let bad = SamplerParams { eta: Some(-1.0), ..Default::default() };
        assert!(Sampler::from_names("Euler a", None, bad).unwrap_err().to_string().contains("eta"));
        let model = ModelSchedule::scaled_linear();
        let sampler = Sampler::from_names("Euler", None, SamplerParams::default()).unwrap();
        let err = sampler
            .txt2img(&model, &mut Shrink { calls: 0 }, &mut Pattern { calls: 0 }, &start(), 0, Hooks::default())
            .unwrap_err();
        assert!(err.to_string().contains("steps"));
        let err = Img2ImgSteps::from_strength(10, 1.5).unwrap_err();
        assert!(err.to_string().contains("denoising_strength"));
        let err = sampler
            .sample_sigmas(&mut Shrink { calls: 0 }, &mut Pattern { calls: 0 }, start(), &[1.0], Hooks::default())
            .unwrap_err();
        assert!(err.to_string().contains("sigmas"));
    }
}
