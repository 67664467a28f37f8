//! The discrete noise levels of an SD model (k-diffusion's `DiscreteSchedule`): ᾱ and σ tables from the
//! β schedule, σ ↔ timestep maps (log-σ interpolation, or A1111's LCM wrapper), the model's own σ schedule.

use crate::error::{Error, Result};

/// Number of training timesteps of SD 1.x / 2.x / XL.
pub const TRAINING_TIMESTEPS: usize = 1000;
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;
/// LCM distils the 1000-step schedule to 50 "original" steps.
const LCM_ORIGINAL_STEPS: usize = 50;

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

    /// Whether this is A1111's LCM table (its denoiser applies LCM's consistency scaling).
    pub(crate) fn is_lcm(&self) -> bool {
        matches!(self.map, TimestepMap::Lcm { .. })
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
