//! k-diffusion's σ-space samplers (commit ab527a9, as A1111 v1.10 pins), plus A1111's Restart and LCM.
//! Each draws noise in exactly k-diffusion's order so recorded noise replays.

use super::Ctx;
use super::ops::{add_scaled, ancestral_step, lin2, scale_add, to_d, weighted_sum};
use crate::denoiser::Tensor;
use crate::error::Result;
use crate::schedules::karras;

/// Churn settings of Euler / Heun / DPM2 (Karras et al. Algorithm 2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Churn {
    pub(crate) s_churn: f64,
    pub(crate) s_tmin: f64,
    pub(crate) s_tmax: f64,
    pub(crate) s_noise: f64,
}

impl Churn {
    /// Raises x from σᵢ to σ̂ = σᵢ(1+γ) with fresh noise. k-diffusion draws the noise every step, even
    /// when γ = 0, so the draw happens here unconditionally to keep the noise stream aligned.
    fn apply(&self, ctx: &mut Ctx<'_, '_>, x: &mut Tensor, sigmas: &[f64], i: usize) -> Result<f64> {
        let steps = (sigmas.len() - 1) as f64;
        let sigma = sigmas[i];
        let gamma = if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / steps).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        };
        let eps = ctx.noise(sigma, sigmas[i + 1], x)?;
        let sigma_hat = sigma * (gamma + 1.0);
        if gamma > 0.0 {
            add_scaled(x, self.s_noise * (sigma_hat * sigma_hat - sigma * sigma).sqrt(), &eps);
        }
        Ok(sigma_hat)
    }
}

pub(crate) fn euler(ctx: &mut Ctx<'_, '_>, mut x: Tensor, sigmas: &[f64], churn: Churn) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let sigma_hat = churn.apply(ctx, &mut x, sigmas, i)?;
        let denoised = ctx.denoise(&x, sigma_hat)?;
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.step(i, sigmas[i], &x, &denoised);
        add_scaled(&mut x, sigmas[i + 1] - sigma_hat, &d);
    }
    Ok(x)
}

pub(crate) fn euler_ancestral(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        ctx.step(i, sigmas[i], &x, &denoised);
        let d = to_d(&x, sigmas[i], &denoised);
        add_scaled(&mut x, down - sigmas[i], &d);
        if sigmas[i + 1] > 0.0 {
            let noise = ctx.noise(sigmas[i], sigmas[i + 1], &x)?;
            add_scaled(&mut x, s_noise * up, &noise);
        }
    }
    Ok(x)
}

pub(crate) fn heun(ctx: &mut Ctx<'_, '_>, mut x: Tensor, sigmas: &[f64], churn: Churn) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let sigma_hat = churn.apply(ctx, &mut x, sigmas, i)?;
        let denoised = ctx.denoise(&x, sigma_hat)?;
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.step(i, sigmas[i], &x, &denoised);
        let next = sigmas[i + 1];
        let dt = next - sigma_hat;
        if next == 0.0 {
            add_scaled(&mut x, dt, &d);
        } else {
            let x_2 = lin2(1.0, &x, dt, &d);
            let denoised_2 = ctx.denoise(&x_2, next)?;
            let d_2 = to_d(&x_2, next, &denoised_2);
            x = weighted_sum(&[(1.0, &x), (dt / 2.0, &d), (dt / 2.0, &d_2)]);
        }
    }
    Ok(x)
}

/// exp of the midpoint of ln a and ln b.
fn log_midpoint(a: f64, b: f64) -> f64 {
    (a.ln() + 0.5 * (b.ln() - a.ln())).exp()
}

pub(crate) fn dpm_2(ctx: &mut Ctx<'_, '_>, mut x: Tensor, sigmas: &[f64], churn: Churn) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let sigma_hat = churn.apply(ctx, &mut x, sigmas, i)?;
        let denoised = ctx.denoise(&x, sigma_hat)?;
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.step(i, sigmas[i], &x, &denoised);
        let next = sigmas[i + 1];
        if next == 0.0 {
            add_scaled(&mut x, next - sigma_hat, &d);
        } else {
            let sigma_mid = log_midpoint(sigma_hat, next);
            let x_2 = lin2(1.0, &x, sigma_mid - sigma_hat, &d);
            let denoised_2 = ctx.denoise(&x_2, sigma_mid)?;
            let d_2 = to_d(&x_2, sigma_mid, &denoised_2);
            add_scaled(&mut x, next - sigma_hat, &d_2);
        }
    }
    Ok(x)
}

pub(crate) fn dpm_2_ancestral(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let denoised = ctx.denoise(&x, sigma)?;
        let (down, up) = ancestral_step(sigma, sigmas[i + 1], eta);
        ctx.step(i, sigma, &x, &denoised);
        let d = to_d(&x, sigma, &denoised);
        if down == 0.0 {
            add_scaled(&mut x, down - sigma, &d);
        } else {
            let sigma_mid = log_midpoint(sigma, down);
            let x_2 = lin2(1.0, &x, sigma_mid - sigma, &d);
            let denoised_2 = ctx.denoise(&x_2, sigma_mid)?;
            let d_2 = to_d(&x_2, sigma_mid, &denoised_2);
            add_scaled(&mut x, down - sigma, &d_2);
            let noise = ctx.noise(sigma, sigmas[i + 1], &x)?;
            add_scaled(&mut x, s_noise * up, &noise);
        }
    }
    Ok(x)
}

/// ∫ over [t[i], t[i+1]] of the Lagrange basis polynomial j of the last `order` points. The polynomial
/// has degree < 4, so 4-point Gauss–Legendre is exact (k-diffusion uses adaptive quadrature, which is
/// exact to rounding for such polynomials).
fn linear_multistep_coeff(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    const NODES: [f64; 4] =
        [-0.861_136_311_594_052_6, -0.339_981_043_584_856_3, 0.339_981_043_584_856_3, 0.861_136_311_594_052_6];
    const WEIGHTS: [f64; 4] =
        [0.347_854_845_137_453_9, 0.652_145_154_862_546_1, 0.652_145_154_862_546_1, 0.347_854_845_137_453_9];
    let basis =
        |tau: f64| (0..order).filter(|&k| k != j).map(|k| (tau - t[i - k]) / (t[i - j] - t[i - k])).product::<f64>();
    let (a, b) = (t[i], t[i + 1]);
    let half = (b - a) / 2.0;
    let mid = (a + b) / 2.0;
    NODES.iter().zip(WEIGHTS).map(|(n, w)| w * basis(mid + half * n)).sum::<f64>() * half
}

pub(crate) fn lms(ctx: &mut Ctx<'_, '_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    const ORDER: usize = 4;
    let mut ds: Vec<Tensor> = Vec::with_capacity(ORDER + 1);
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        ds.push(to_d(&x, sigmas[i], &denoised));
        if ds.len() > ORDER {
            ds.remove(0);
        }
        ctx.step(i, sigmas[i], &x, &denoised);
        let order = (i + 1).min(ORDER);
        for (j, d) in ds.iter().rev().enumerate().take(order) {
            add_scaled(&mut x, linear_multistep_coeff(order, sigmas, i, j), d);
        }
    }
    Ok(x)
}

pub(crate) fn dpmpp_2s_ancestral(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let denoised = ctx.denoise(&x, sigma)?;
        let (down, up) = ancestral_step(sigma, sigmas[i + 1], eta);
        ctx.step(i, sigma, &x, &denoised);
        if down == 0.0 {
            let d = to_d(&x, sigma, &denoised);
            add_scaled(&mut x, down - sigma, &d);
        } else {
            let (t, t_next) = (-sigma.ln(), -down.ln());
            let h = t_next - t;
            let s = t + 0.5 * h;
            let x_2 = lin2((-s).exp() / (-t).exp(), &x, -(-h * 0.5).exp_m1(), &denoised);
            let denoised_2 = ctx.denoise(&x_2, (-s).exp())?;
            scale_add(&mut x, (-t_next).exp() / (-t).exp(), -(-h).exp_m1(), &denoised_2);
        }
        if sigmas[i + 1] > 0.0 {
            let noise = ctx.noise(sigma, sigmas[i + 1], &x)?;
            add_scaled(&mut x, s_noise * up, &noise);
        }
    }
    Ok(x)
}

pub(crate) fn dpmpp_sde(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
) -> Result<Tensor> {
    const R: f64 = 0.5;
    let sigma_fn = |t: f64| (-t).exp();
    let t_fn = |s: f64| -s.ln();
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let denoised = ctx.denoise(&x, sigma)?;
        ctx.step(i, sigma, &x, &denoised);
        if sigmas[i + 1] == 0.0 {
            let d = to_d(&x, sigma, &denoised);
            add_scaled(&mut x, sigmas[i + 1] - sigma, &d);
            continue;
        }
        let (t, t_next) = (t_fn(sigma), t_fn(sigmas[i + 1]));
        let h = t_next - t;
        let s = t + h * R;
        let fac = 1.0 / (2.0 * R);

        let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(s), eta);
        let s_ = t_fn(sd);
        let mut x_2 = lin2(sigma_fn(s_) / sigma_fn(t), &x, -(t - s_).exp_m1(), &denoised);
        let (query_t, query_s, query_next) = float32_queries(sigma, sigmas[i + 1]);
        let noise = ctx.noise(query_t, query_s, &x)?;
        add_scaled(&mut x_2, s_noise * su, &noise);
        let denoised_2 = ctx.denoise(&x_2, sigma_fn(s))?;

        let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(t_next), eta);
        let t_next_ = t_fn(sd);
        let denoised_d = lin2(1.0 - fac, &denoised, fac, &denoised_2);
        scale_add(&mut x, sigma_fn(t_next_) / sigma_fn(t), -(t - t_next_).exp_m1(), &denoised_d);
        let noise = ctx.noise(query_t, query_next, &x)?;
        add_scaled(&mut x, s_noise * su, &noise);
    }
    Ok(x)
}

/// The σ values k-diffusion's `sample_dpmpp_sde` hands its noise sampler, computed as torch does on the
/// float32 schedule (t = −ln σ, s = t + h/2, σ = exp(−t)): a Brownian tree rounds its query times to 1e-6,
/// where float64 and float32 arithmetic can disagree.
fn float32_queries(sigma: f64, sigma_next: f64) -> (f64, f64, f64) {
    let (t, t_next) = (-(sigma as f32).ln(), -(sigma_next as f32).ln());
    let s = t + (t_next - t) * 0.5;
    let sigma_of = |t: f32| f64::from((-t).exp());
    (sigma_of(t), sigma_of(s), sigma_of(t_next))
}

pub(crate) fn dpmpp_2m(ctx: &mut Ctx<'_, '_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let denoised = ctx.denoise(&x, sigma)?;
        ctx.step(i, sigma, &x, &denoised);
        let next = sigmas[i + 1];
        // σ_next/σ and −expm1(−h) written without logs so that σ_next = 0 gives exactly x = denoised.
        let ratio = next / sigma;
        let weight = 1.0 - ratio;
        match &old_denoised {
            Some(old) if next != 0.0 => {
                let (t, t_next) = (-sigma.ln(), -next.ln());
                let h = t_next - t;
                let h_last = t + sigmas[i - 1].ln();
                let r = h_last / h;
                let denoised_d = lin2(1.0 + 1.0 / (2.0 * r), &denoised, -1.0 / (2.0 * r), old);
                scale_add(&mut x, ratio, weight, &denoised_d);
            }
            _ => scale_add(&mut x, ratio, weight, &denoised),
        }
        old_denoised = Some(denoised);
    }
    Ok(x)
}

pub(crate) fn dpmpp_2m_sde(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    heun: bool,
) -> Result<Tensor> {
    let mut old_denoised: Option<Tensor> = None;
    let mut h_last: Option<f64> = None;
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let next = sigmas[i + 1];
        let denoised = ctx.denoise(&x, sigma)?;
        ctx.step(i, sigma, &x, &denoised);
        let mut h = f64::NAN;
        if next == 0.0 {
            x = denoised.clone();
        } else {
            let (t, s) = (-sigma.ln(), -next.ln());
            h = s - t;
            let eta_h = eta * h;
            let phi = -(-h - eta_h).exp_m1();
            scale_add(&mut x, next / sigma * (-eta_h).exp(), phi, &denoised);
            if let (Some(old), Some(h_last)) = (&old_denoised, h_last) {
                let r = h_last / h;
                let coeff = if heun { (phi / (-h - eta_h) + 1.0) / r } else { 0.5 * phi / r };
                let diff = lin2(1.0, &denoised, -1.0, old);
                add_scaled(&mut x, coeff, &diff);
            }
            if eta != 0.0 {
                let noise = ctx.noise(sigma, next, &x)?;
                add_scaled(&mut x, next * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise, &noise);
            }
        }
        old_denoised = Some(denoised);
        h_last = Some(h);
    }
    Ok(x)
}

pub(crate) fn dpmpp_3m_sde(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
) -> Result<Tensor> {
    let mut denoised_1: Option<Tensor> = None;
    let mut denoised_2: Option<Tensor> = None;
    let (mut h_1, mut h_2): (Option<f64>, Option<f64>) = (None, None);
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let next = sigmas[i + 1];
        let denoised = ctx.denoise(&x, sigma)?;
        ctx.step(i, sigma, &x, &denoised);
        let mut h = f64::NAN;
        if next == 0.0 {
            x = denoised.clone();
        } else {
            let (t, s) = (-sigma.ln(), -next.ln());
            h = s - t;
            let h_eta = h * (eta + 1.0);
            scale_add(&mut x, (-h_eta).exp(), -(-h_eta).exp_m1(), &denoised);
            let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
            match (&denoised_1, &denoised_2, h_1, h_2) {
                (Some(d_1), Some(d_2), Some(h1), Some(h2)) => {
                    let (r0, r1) = (h1 / h, h2 / h);
                    let d1_0 = lin2(1.0 / r0, &denoised, -1.0 / r0, d_1);
                    let d1_1 = lin2(1.0 / r1, d_1, -1.0 / r1, d_2);
                    let k = r0 / (r0 + r1);
                    let d1 = lin2(1.0 + k, &d1_0, -k, &d1_1);
                    let d2 = lin2(1.0 / (r0 + r1), &d1_0, -1.0 / (r0 + r1), &d1_1);
                    let phi_3 = phi_2 / h_eta - 0.5;
                    add_scaled(&mut x, phi_2, &d1);
                    add_scaled(&mut x, -phi_3, &d2);
                }
                (Some(d_1), _, Some(h1), _) => {
                    let r = h1 / h;
                    let d = lin2(1.0 / r, &denoised, -1.0 / r, d_1);
                    add_scaled(&mut x, phi_2, &d);
                }
                _ => {}
            }
            if eta != 0.0 {
                let noise = ctx.noise(sigma, next, &x)?;
                add_scaled(&mut x, next * (-(-2.0 * h * eta).exp_m1()).sqrt() * s_noise, &noise);
            }
        }
        denoised_2 = denoised_1.take();
        denoised_1 = Some(denoised);
        h_2 = h_1;
        h_1 = Some(h);
    }
    Ok(x)
}

pub(crate) fn lcm(ctx: &mut Ctx<'_, '_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        ctx.step(i, sigmas[i], &x, &denoised);
        x = denoised;
        if sigmas[i + 1] > 0.0 {
            let noise = ctx.noise(sigmas[i], sigmas[i + 1], &x)?;
            add_scaled(&mut x, sigmas[i + 1], &noise);
        }
    }
    Ok(x)
}

/// Index of the σ nearest `target` (first on ties, as `torch.argmin`).
fn nearest(sigmas: &[f64], target: f64) -> usize {
    let mut best = 0;
    for (i, s) in sigmas.iter().enumerate() {
        if (s - target).abs() < (sigmas[best] - target).abs() {
            best = i;
        }
    }
    best
}

/// The (from, to) pairs A1111's `restart_sampler` walks: with ≥ 20 steps it re-makes a Karras schedule
/// with fewer steps and inserts restart segments back up to σ = 2 after reaching σ ≈ 0.1.
fn restart_plan(sigmas: &[f64]) -> Vec<(f64, f64)> {
    let steps = sigmas.len() - 1;
    let mut sigmas = sigmas.to_vec();
    let mut restart: Option<(usize, usize, usize)> = None;
    if steps >= 20 {
        let (restart_steps, restart_times) = if steps >= 36 { (steps / 4, 2) } else { (9, 1) };
        sigmas = karras(steps - restart_steps * restart_times, sigmas[sigmas.len() - 2], sigmas[0], 7.0);
        restart = Some((nearest(&sigmas, 0.1), restart_steps + 1, restart_times));
    }
    let mut plan = Vec::new();
    for i in 0..sigmas.len() - 1 {
        plan.push((sigmas[i], sigmas[i + 1]));
        let Some((at, restart_steps, times)) = restart else { continue };
        if i + 1 != at {
            continue;
        }
        let min_idx = i + 1;
        let max_idx = nearest(&sigmas, 2.0);
        if max_idx < min_idx {
            let mut segment = karras(restart_steps, sigmas[min_idx], sigmas[max_idx], 7.0);
            segment.pop();
            for _ in 0..times {
                plan.extend(segment.windows(2).map(|w| (w[0], w[1])));
            }
        }
    }
    plan
}

pub(crate) fn restart(ctx: &mut Ctx<'_, '_>, mut x: Tensor, sigmas: &[f64], s_noise: f64) -> Result<Tensor> {
    let plan = restart_plan(sigmas);
    ctx.total = plan.len();
    let mut last_sigma: Option<f64> = None;
    for (step, &(old, new)) in plan.iter().enumerate() {
        match last_sigma {
            Some(last) if last < old => {
                let noise = ctx.noise(last, old, &x)?;
                add_scaled(&mut x, s_noise * (old * old - last * last).sqrt(), &noise);
            }
            _ => {}
        }
        let denoised = ctx.denoise(&x, old)?;
        let d = to_d(&x, old, &denoised);
        ctx.step(step, new, &x, &denoised);
        let dt = new - old;
        if new == 0.0 {
            add_scaled(&mut x, dt, &d);
        } else {
            let x_2 = lin2(1.0, &x, dt, &d);
            let denoised_2 = ctx.denoise(&x_2, new)?;
            let d_2 = to_d(&x_2, new, &denoised_2);
            x = weighted_sum(&[(1.0, &x), (dt / 2.0, &d), (dt / 2.0, &d_2)]);
        }
        last_sigma = Some(new);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lms_coefficients_reproduce_known_integrals() {
        let t = [3.0, 2.0, 1.5, 1.0, 0.5];
        // Order 1: ∫ 1 dτ over [t1, t2].
        assert!((linear_multistep_coeff(1, &t, 1, 0) - (1.5 - 2.0)).abs() < 1e-12);
        // Coefficients of one order sum to the interval length (they integrate 1 exactly).
        let sum: f64 = (0..4).map(|j| linear_multistep_coeff(4, &t, 3, j)).sum();
        assert!((sum - (0.5 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn restart_plan_short_runs_are_plain_heun() {
        let s = karras(10, 0.03, 14.6, 7.0);
        let plan = restart_plan(&s);
        assert_eq!(plan.len(), 10);
        assert_eq!(plan[0], (s[0], s[1]));
    }

    #[test]
    fn restart_plan_inserts_one_restart_segment_at_20_steps() {
        let s = karras(20, 0.0291675, 14.614642, 7.0);
        let plan = restart_plan(&s);
        // 11 base steps + 9 restart steps (a 10-step Karras segment without its final 0).
        let ups = plan.windows(2).filter(|w| w[1].0 > w[0].1).count();
        assert_eq!(ups, 1, "one jump back up");
        assert_eq!(plan.len(), 11 + 9);
    }
}
