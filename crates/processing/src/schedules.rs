//! A1111's sigma schedules (`modules/sd_schedulers.py`): Karras, Exponential, Align Your Steps, Beta, …,
//! with A1111's labels, API names and aliases.

use statrs::distribution::{Beta, ContinuousCDF};

use crate::error::{Error, Result};
use crate::model_schedule::{ModelSchedule, linspace};

/// A sigma schedule ("Schedule type" in A1111).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// The sampler's default (see `SamplerKind::default_schedule`).
    Automatic,
    /// The model's discrete schedule, timesteps uniform from 999 to 0.
    Uniform,
    /// Karras et al. (2022), ρ = 7.
    Karras,
    /// Uniform in log σ.
    Exponential,
    /// Polynomial in log σ, ρ = 1.
    Polyexponential,
    /// Timesteps uniform over n+1 points, the last dropped (SGM / SDXL style).
    SgmUniform,
    /// Uniform in arctan σ (KL-optimal); ends at σ_min, not 0.
    KlOptimal,
    /// NVIDIA's Align Your Steps table, log-linearly interpolated.
    AlignYourSteps,
    /// Every (1000/n)-th discrete σ from the top.
    Simple,
    /// Timesteps uniform between those of σ_max and σ_min.
    Normal,
    /// Every (1000 // n)-th discrete σ from timestep 1 (may give more than n steps).
    Ddim,
    /// Beta-distribution quantiles ("Beta Sampling is All You Need"), α = β = 0.6 by default.
    Beta,
}

/// Which Align Your Steps table applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelFamily {
    /// SD 1.x / 2.x.
    #[default]
    Sd15,
    /// SDXL.
    Sdxl,
}

const AYS_SD15: [f64; 11] = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029];
const AYS_SDXL: [f64; 11] = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029];

impl Schedule {
    /// Every schedule, in A1111's order.
    pub const ALL: [Schedule; 12] = [
        Schedule::Automatic,
        Schedule::Uniform,
        Schedule::Karras,
        Schedule::Exponential,
        Schedule::Polyexponential,
        Schedule::SgmUniform,
        Schedule::KlOptimal,
        Schedule::AlignYourSteps,
        Schedule::Simple,
        Schedule::Normal,
        Schedule::Ddim,
        Schedule::Beta,
    ];

    /// The lower-case API name (`scheduler` field of `/sdapi/v1/txt2img`).
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Automatic => "automatic",
            Schedule::Uniform => "uniform",
            Schedule::Karras => "karras",
            Schedule::Exponential => "exponential",
            Schedule::Polyexponential => "polyexponential",
            Schedule::SgmUniform => "sgm_uniform",
            Schedule::KlOptimal => "kl_optimal",
            Schedule::AlignYourSteps => "align_your_steps",
            Schedule::Simple => "simple",
            Schedule::Normal => "normal",
            Schedule::Ddim => "ddim",
            Schedule::Beta => "beta",
        }
    }

    /// The UI label (infotext "Schedule type").
    pub fn label(self) -> &'static str {
        match self {
            Schedule::Automatic => "Automatic",
            Schedule::Uniform => "Uniform",
            Schedule::Karras => "Karras",
            Schedule::Exponential => "Exponential",
            Schedule::Polyexponential => "Polyexponential",
            Schedule::SgmUniform => "SGM Uniform",
            Schedule::KlOptimal => "KL Optimal",
            Schedule::AlignYourSteps => "Align Your Steps",
            Schedule::Simple => "Simple",
            Schedule::Normal => "Normal",
            Schedule::Ddim => "DDIM",
            Schedule::Beta => "Beta",
        }
    }

    /// Extra names A1111 accepts.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Schedule::SgmUniform => &["SGMUniform"],
            _ => &[],
        }
    }

    /// Looks a schedule up by label, API name or alias (case-insensitive); unknown names are an error
    /// listing the valid ones.
    pub fn from_name(name: &str) -> Result<Self> {
        let wanted = name.trim();
        Self::ALL.into_iter().find(|s| s.spellings().any(|n| n.eq_ignore_ascii_case(wanted))).ok_or_else(|| {
            Error::InvalidParameter {
                field: "scheduler",
                problem: format!(
                    "unknown schedule `{name}`; valid: {}",
                    Self::ALL.iter().map(|s| format!("{} ({})", s.label(), s.name())).collect::<Vec<_>>().join(", ")
                ),
            }
        })
    }

    /// Label, name and aliases.
    pub(crate) fn spellings(self) -> impl Iterator<Item = &'static str> {
        [self.label(), self.name()].into_iter().chain(self.aliases().iter().copied())
    }

    /// ρ A1111 passes when no override is set (Karras 7, Polyexponential 1).
    fn default_rho(self) -> Option<f64> {
        match self {
            Schedule::Karras => Some(7.0),
            Schedule::Polyexponential => Some(1.0),
            _ => None,
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Options A1111 keeps in settings: σ range and ρ overrides, Beta's shape, the AYS table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleOptions {
    /// Overrides σ_min (A1111 `sigma_min`; `None` = the model's).
    pub sigma_min: Option<f64>,
    /// Overrides σ_max (A1111 `sigma_max`; `None` = the model's).
    pub sigma_max: Option<f64>,
    /// Overrides ρ of Karras / Polyexponential (A1111 `rho`; `None` = the schedule's default).
    pub rho: Option<f64>,
    /// Beta schedule α (A1111 `beta_dist_alpha`, 0.6).
    pub beta_alpha: f64,
    /// Beta schedule β (A1111 `beta_dist_beta`, 0.6).
    pub beta_beta: f64,
    /// Picks the Align Your Steps table.
    pub family: ModelFamily,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        Self { sigma_min: None, sigma_max: None, rho: None, beta_alpha: 0.6, beta_beta: 0.6, family: ModelFamily::Sd15 }
    }
}

/// The σ sequence of `schedule` for `steps` steps on `model`, as A1111 computes it (normally `steps + 1`
/// values ending in 0; KL Optimal ends at σ_min and DDIM may be longer).
///
/// `Automatic` here means the model's own discrete schedule; resolve a sampler's default first with
/// `SamplerKind::resolve_schedule`.
pub fn sigmas(schedule: Schedule, steps: usize, model: &ModelSchedule, options: &ScheduleOptions) -> Result<Vec<f64>> {
    if steps == 0 {
        return Err(Error::InvalidParameter { field: "steps", problem: "must be at least 1".into() });
    }
    let sigma_min = options.sigma_min.unwrap_or(model.sigma_min());
    let sigma_max = options.sigma_max.unwrap_or(model.sigma_max());
    check_sigma_range(sigma_min, sigma_max)?;
    let rho = schedule.default_rho().map(|default| options.rho.unwrap_or(default));
    if let Some(rho) = rho.filter(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(Error::InvalidParameter { field: "rho", problem: format!("{rho} must be a positive number") });
    }
    Ok(match schedule {
        Schedule::Automatic | Schedule::Uniform => model.get_sigmas(steps),
        Schedule::Karras => karras(steps, sigma_min, sigma_max, rho.unwrap_or(7.0)),
        Schedule::Exponential => exponential(steps, sigma_min, sigma_max),
        Schedule::Polyexponential => polyexponential(steps, sigma_min, sigma_max, rho.unwrap_or(1.0)),
        Schedule::SgmUniform => timestep_uniform(steps, sigma_min, sigma_max, model, true),
        Schedule::KlOptimal => kl_optimal(steps, sigma_min, sigma_max),
        Schedule::AlignYourSteps => align_your_steps(steps, options.family),
        Schedule::Simple => simple(steps, model),
        Schedule::Normal => timestep_uniform(steps, sigma_min, sigma_max, model, false),
        Schedule::Ddim => ddim(steps, model),
        Schedule::Beta => beta(steps, sigma_min, sigma_max, options.beta_alpha, options.beta_beta)?,
    })
}

fn check_sigma_range(sigma_min: f64, sigma_max: f64) -> Result<()> {
    if !(sigma_min.is_finite() && sigma_min > 0.0) {
        return Err(Error::InvalidParameter { field: "sigma_min", problem: format!("{sigma_min} must be > 0") });
    }
    if !(sigma_max.is_finite() && sigma_max > sigma_min) {
        return Err(Error::InvalidParameter {
            field: "sigma_max",
            problem: format!("{sigma_max} must be finite and greater than sigma_min {sigma_min}"),
        });
    }
    Ok(())
}

fn with_zero(mut sigmas: Vec<f64>) -> Vec<f64> {
    sigmas.push(0.0);
    sigmas
}

/// k-diffusion `get_sigmas_karras`.
pub(crate) fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    with_zero(
        linspace(0.0, 1.0, n).into_iter().map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho)).collect(),
    )
}

fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    with_zero(linspace(sigma_max.ln(), sigma_min.ln(), n).into_iter().map(f64::exp).collect())
}

fn polyexponential(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (ln_min, ln_max) = (sigma_min.ln(), sigma_max.ln());
    with_zero(linspace(1.0, 0.0, n).into_iter().map(|r| (r.powf(rho) * (ln_max - ln_min) + ln_min).exp()).collect())
}

/// SGM Uniform (`n + 1` timesteps, last dropped) and Normal (`n` timesteps) between σ_max and σ_min.
fn timestep_uniform(n: usize, sigma_min: f64, sigma_max: f64, model: &ModelSchedule, sgm: bool) -> Vec<f64> {
    let start = model.sigma_to_t(sigma_max);
    let end = model.sigma_to_t(sigma_min);
    let mut ts = linspace(start, end, if sgm { n + 1 } else { n });
    if sgm {
        ts.pop();
    }
    with_zero(ts.into_iter().map(|t| model.t_to_sigma(t)).collect())
}

fn kl_optimal(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let (alpha_min, alpha_max) = (sigma_min.atan(), sigma_max.atan());
    (0..=n)
        .map(|i| {
            let f = i as f64 / n as f64;
            (f * alpha_min + (1.0 - f) * alpha_max).tan()
        })
        .collect()
}

fn align_your_steps(n: usize, family: ModelFamily) -> Vec<f64> {
    let table = match family {
        ModelFamily::Sd15 => &AYS_SD15,
        ModelFamily::Sdxl => &AYS_SDXL,
    };
    if n == table.len() {
        return with_zero(table.to_vec());
    }
    // Interpolate log σ linearly over [0, 1] in ascending order, then flip back to descending.
    let xs = linspace(0.0, 1.0, table.len());
    let ys: Vec<f64> = table.iter().rev().map(|s| s.ln()).collect();
    let mut out: Vec<f64> = linspace(0.0, 1.0, n).into_iter().map(|x| interp(x, &xs, &ys).exp()).collect();
    out.reverse();
    with_zero(out)
}

/// `numpy.interp` for increasing `xs`.
fn interp(x: f64, xs: &[f64], ys: &[f64]) -> f64 {
    if x <= xs[0] {
        return ys[0];
    }
    let last = xs.len() - 1;
    if x >= xs[last] {
        return ys[last];
    }
    let i = xs.partition_point(|&v| v <= x) - 1;
    let w = (x - xs[i]) / (xs[i + 1] - xs[i]);
    ys[i] + w * (ys[i + 1] - ys[i])
}

fn simple(n: usize, model: &ModelSchedule) -> Vec<f64> {
    let table = model.sigmas();
    let stride = table.len() as f64 / n as f64;
    with_zero((0..n).map(|k| table[table.len() - 1 - (k as f64 * stride) as usize]).collect())
}

fn ddim(n: usize, model: &ModelSchedule) -> Vec<f64> {
    let table = model.sigmas();
    let stride = (table.len() / n).max(1);
    let mut out: Vec<f64> = table.iter().skip(1).step_by(stride).copied().collect();
    out.reverse();
    with_zero(out)
}

fn beta(n: usize, sigma_min: f64, sigma_max: f64, alpha: f64, beta: f64) -> Result<Vec<f64>> {
    let dist = Beta::new(alpha, beta).map_err(|e| Error::InvalidParameter {
        field: "beta_dist_alpha / beta_dist_beta",
        problem: format!("({alpha}, {beta}) is not a valid Beta distribution: {e}; use positive shapes"),
    })?;
    Ok(with_zero(
        linspace(0.0, 1.0, n)
            .into_iter()
            .map(|q| sigma_min + dist.inverse_cdf(1.0 - q) * (sigma_max - sigma_min))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelSchedule {
        ModelSchedule::scaled_linear()
    }

    #[test]
    fn names_labels_and_aliases_resolve() {
        for s in Schedule::ALL {
            assert_eq!(Schedule::from_name(s.name()).unwrap(), s);
            assert_eq!(Schedule::from_name(s.label()).unwrap(), s);
        }
        assert_eq!(Schedule::from_name("SGMUniform").unwrap(), Schedule::SgmUniform);
        assert_eq!(Schedule::from_name("KARRAS").unwrap(), Schedule::Karras);
    }

    #[test]
    fn unknown_schedule_lists_valid_ones() {
        let err = Schedule::from_name("cosine").unwrap_err().to_string();
        assert!(err.contains("cosine") && err.contains("Karras (karras)") && err.contains("align_your_steps"), "{err}");
    }

    #[test]
    fn bad_parameters_are_errors() {
        let m = model();
        assert!(sigmas(Schedule::Karras, 0, &m, &ScheduleOptions::default()).is_err());
        let bad_rho = ScheduleOptions { rho: Some(-1.0), ..Default::default() };
        assert!(sigmas(Schedule::Karras, 10, &m, &bad_rho).unwrap_err().to_string().contains("rho"));
        let bad_range = ScheduleOptions { sigma_min: Some(20.0), ..Default::default() };
        assert!(sigmas(Schedule::Exponential, 10, &m, &bad_range).is_err());
        let bad_beta = ScheduleOptions { beta_alpha: 0.0, ..Default::default() };
        assert!(sigmas(Schedule::Beta, 10, &m, &bad_beta).unwrap_err().to_string().contains("Beta"));
    }

    #[test]
    fn karras_endpoints_and_trailing_zero() {
        let m = model();
        let s = sigmas(Schedule::Karras, 10, &m, &ScheduleOptions::default()).unwrap();
        assert_eq!(s.len(), 11);
        assert!((s[0] - m.sigma_max()).abs() < 1e-9 && (s[9] - m.sigma_min()).abs() < 1e-9);
        assert_eq!(s[10], 0.0);
    }

    #[test]
    fn quirky_lengths_match_a1111() {
        let m = model();
        let o = ScheduleOptions::default();
        assert_eq!(sigmas(Schedule::Ddim, 7, &m, &o).unwrap().len(), 9);
        let kl = sigmas(Schedule::KlOptimal, 5, &m, &o).unwrap();
        assert_eq!(kl.len(), 6);
        assert!((kl[5] - m.sigma_min()).abs() < 1e-9, "KL Optimal ends at sigma_min");
        assert_eq!(sigmas(Schedule::AlignYourSteps, 11, &m, &o).unwrap()[1], 6.475);
    }

    #[test]
    fn beta_is_symmetric_for_equal_shapes() {
        let m = model();
        let s = sigmas(Schedule::Beta, 3, &m, &ScheduleOptions::default()).unwrap();
        let mid = (m.sigma_min() + m.sigma_max()) / 2.0;
        assert!((s[1] - mid).abs() < 1e-9, "{s:?}");
    }
}
