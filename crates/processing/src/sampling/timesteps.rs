//! A1111's timestep samplers (`sd_samplers_timesteps_impl`): DDIM, DDIM CFG++ and PLMS over discrete
//! timesteps in variance-preserving space, driven through the σ-space [`crate::Denoiser`].

use super::Ctx;
use super::ops::{lin2, weighted_sum};
use crate::denoiser::Tensor;
use crate::error::{Error, Result};
use crate::model_schedule::ModelSchedule;

/// CFG++ maps the CFG scale range 0..12.5 onto 0..1.
const CFGPP_SCALE_DIVISOR: f64 = 12.5;

/// A1111's `get_timesteps`: `clip(range(0, 1000, 1000 // steps) + 1, 0, 999)` (ascending; may hold more
/// than `steps` entries when 1000 is not a multiple of steps).
pub(crate) fn a1111_timesteps(steps: usize) -> Vec<usize> {
    let stride = (1000 / steps.max(1)).max(1);
    (0..1000).step_by(stride).map(|t| (t + 1).min(999)).collect()
}

/// The UNet's ε at VP latent `x` and (possibly fractional) timestep `t`, through the σ-space denoiser:
/// σ = t_to_sigma(t), x_σ = x·√(1+σ²), ε = (x_σ − D(x_σ, σ))/σ. Also returns the unconditional ε when the
/// denoiser exposes one.
pub(crate) fn eps_at(
    ctx: &mut Ctx<'_, '_>,
    model: &ModelSchedule,
    x: &Tensor,
    t: f64,
) -> Result<(Tensor, Option<Tensor>)> {
    let sigma = model.t_to_sigma(t);
    let k = (1.0 + sigma * sigma).sqrt();
    let x_sigma = x.mapv(|v| (f64::from(v) * k) as f32);
    let denoised = ctx.denoise(&x_sigma, sigma)?;
    let eps = lin2(1.0 / sigma, &x_sigma, -1.0 / sigma, &denoised);
    let uncond = ctx.denoiser().last_uncond().map(|u| lin2(1.0 / sigma, &x_sigma, -1.0 / sigma, u));
    Ok((eps, uncond))
}

/// ᾱ at each timestep and at the previous one (ᾱ₀ before the first).
fn alphas(model: &ModelSchedule, ts: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let ac = model.alphas_cumprod();
    let a: Vec<f64> = ts.iter().map(|&t| ac[t]).collect();
    let a_prev: Vec<f64> = std::iter::once(ac[0]).chain(ts[..ts.len() - 1].iter().map(|&t| ac[t])).collect();
    (a, a_prev)
}

pub(crate) fn ddim(
    ctx: &mut Ctx<'_, '_>,
    model: &ModelSchedule,
    mut x: Tensor,
    ts: &[usize],
    eta: f64,
    cfgpp: bool,
) -> Result<Tensor> {
    if cfgpp && !ctx.denoiser().set_guidance_multiplier(1.0 / CFGPP_SCALE_DIVISOR) {
        return Err(Error::InvalidParameter {
            field: "sampler_name",
            problem: "DDIM CFG++ needs a classifier-free-guidance denoiser (one with an unconditional prediction)"
                .into(),
        });
    }
    let result = ddim_loop(ctx, model, &mut x, ts, eta, cfgpp);
    if cfgpp {
        ctx.denoiser().set_guidance_multiplier(1.0);
    }
    result.map(|()| x)
}

fn ddim_loop(
    ctx: &mut Ctx<'_, '_>,
    model: &ModelSchedule,
    x: &mut Tensor,
    ts: &[usize],
    eta: f64,
    cfgpp: bool,
) -> Result<()> {
    let (a, a_prev) = alphas(model, ts);
    for i in 0..ts.len() - 1 {
        let index = ts.len() - 1 - i;
        let (e_t, e_uncond) = eps_at(ctx, model, x, ts[index] as f64)?;
        let direction = match (cfgpp, e_uncond) {
            (false, _) => e_t.clone(),
            (true, Some(u)) => u,
            (true, None) => {
                return Err(Error::InvalidParameter {
                    field: "sampler_name",
                    problem: "DDIM CFG++ got no unconditional prediction from the denoiser".into(),
                });
            }
        };
        let (a_t, a_p) = (a[index], a_prev[index]);
        let sigma_t = eta * ((1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p)).sqrt();
        let pred_x0 = lin2(1.0 / a_t.sqrt(), x, -(1.0 - a_t).sqrt() / a_t.sqrt(), &e_t);
        // A1111 draws the noise every step, even when it is multiplied by σ_t = 0.
        let noise = ctx.noise(0.0, 0.0, x)?;
        let dir_coeff = (1.0 - a_p - sigma_t * sigma_t).sqrt();
        *x = weighted_sum(&[(a_p.sqrt(), &pred_x0), (dir_coeff, &direction), (sigma_t, &noise)]);
        ctx.step(i, 0.0, x, &pred_x0);
    }
    Ok(())
}

pub(crate) fn plms(ctx: &mut Ctx<'_, '_>, model: &ModelSchedule, mut x: Tensor, ts: &[usize]) -> Result<Tensor> {
    let (a, a_prev) = alphas(model, ts);
    let step = |x: &Tensor, e: &Tensor, index: usize| {
        let (a_t, a_p) = (a[index], a_prev[index]);
        let pred_x0 = lin2(1.0 / a_t.sqrt(), x, -(1.0 - a_t).sqrt() / a_t.sqrt(), e);
        (lin2(a_p.sqrt(), &pred_x0, (1.0 - a_p).sqrt(), e), pred_x0)
    };
    let mut old_eps: Vec<Tensor> = Vec::with_capacity(4);
    for i in 0..ts.len() - 1 {
        let index = ts.len() - 1 - i;
        let t_next = ts[index.saturating_sub(1)];
        let (e_t, _) = eps_at(ctx, model, &x, ts[index] as f64)?;
        let e_prime = match old_eps.len() {
            0 => {
                let (x_prev, _) = step(&x, &e_t, index);
                let (e_next, _) = eps_at(ctx, model, &x_prev, t_next as f64)?;
                lin2(0.5, &e_t, 0.5, &e_next)
            }
            1 => lin2(1.5, &e_t, -0.5, &old_eps[0]),
            2 => weighted_sum(&[(23.0 / 12.0, &e_t), (-16.0 / 12.0, &old_eps[1]), (5.0 / 12.0, &old_eps[0])]),
            _ => weighted_sum(&[
                (55.0 / 24.0, &e_t),
                (-59.0 / 24.0, &old_eps[2]),
                (37.0 / 24.0, &old_eps[1]),
                (-9.0 / 24.0, &old_eps[0]),
            ]),
        };
        let (x_prev, pred_x0) = step(&x, &e_prime, index);
        old_eps.push(e_t);
        if old_eps.len() >= 4 {
            old_eps.remove(0);
        }
        x = x_prev;
        ctx.step(i, 0.0, &x, &pred_x0);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_follow_a1111() {
        assert_eq!(a1111_timesteps(1), vec![1]);
        assert_eq!(a1111_timesteps(2), vec![1, 501]);
        assert_eq!(a1111_timesteps(7).len(), 8, "1000 // 7 = 142 → 8 entries");
        assert_eq!(*a1111_timesteps(20).last().unwrap(), 951);
        assert_eq!(*a1111_timesteps(1000).last().unwrap(), 999);
    }
}
