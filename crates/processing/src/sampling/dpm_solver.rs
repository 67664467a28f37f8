//! k-diffusion's `DPMSolver`: DPM fast (fixed orders 3/2/1 over uniform t = −ln σ) and DPM adaptive
//! (embedded 2/3 pair with a PID step-size controller).

use super::Ctx;
use super::ops::{add_scaled, ancestral_step, lin2};
use crate::denoiser::Tensor;
use crate::error::{Error, Result};

// k-diffusion's DPM-Solver keeps its times (and the σ derived from them) in float32 tensors; the
// adaptive controller's accept/reject decisions are sensitive to that, so the same rounding is applied.
fn f32_round(v: f64) -> f64 {
    f64::from(v as f32)
}

fn sigma_of(t: f64) -> f64 {
    f32_round((-t).exp())
}

fn t_of(sigma: f64) -> f64 {
    f32_round(-f32_round(sigma).ln())
}

/// ε at time t, cached per step by key as k-diffusion's `eps_cache` (0 = eps, 1 = eps_r1, 2 = eps_r2).
struct Solver<'c, 'a, 'h> {
    ctx: &'c mut Ctx<'a, 'h>,
}

impl Solver<'_, '_, '_> {
    fn eps(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let sigma = sigma_of(t);
        let denoised = self.ctx.denoise(x, sigma)?;
        Ok(lin2(1.0 / sigma, x, -1.0 / sigma, &denoised))
    }

    fn step_1(&mut self, x: &Tensor, t: f64, t_next: f64, eps: &Tensor) -> Tensor {
        let h = t_next - t;
        lin2(1.0, x, -sigma_of(t_next) * h.exp_m1(), eps)
    }

    /// The second-order step; also returns ε at the intermediate point (k-diffusion caches it as
    /// `eps_r1`, and DPM adaptive's third-order step reuses it).
    fn step_2(&mut self, x: &Tensor, t: f64, t_next: f64, r1: f64, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = t_next - t;
        let s1 = t + r1 * h;
        let u1 = lin2(1.0, x, -sigma_of(s1) * (r1 * h).exp_m1(), eps);
        let eps_r1 = self.eps(&u1, s1)?;
        let a = sigma_of(t_next) * h.exp_m1();
        let b = sigma_of(t_next) / (2.0 * r1) * h.exp_m1();
        let mut out = lin2(1.0, x, -a + b, eps);
        add_scaled(&mut out, -b, &eps_r1);
        Ok((out, eps_r1))
    }

    /// The third-order step; with a cached `eps_r1` (from `step_2` with r1 = 1/3) it also returns the
    /// difference x_low − x_high of the embedded pair, taken from the ε terms rather than from the two
    /// float32 latents, whose rounding would swamp the tiny difference DPM adaptive's controller reads.
    fn step_3(
        &mut self,
        x: &Tensor,
        t: f64,
        t_next: f64,
        eps: &Tensor,
        eps_r1: Option<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        const R1: f64 = 1.0 / 3.0;
        const R2: f64 = 2.0 / 3.0;
        let h = t_next - t;
        let (s1, s2) = (t + R1 * h, t + R2 * h);
        let cached = eps_r1.is_some();
        let eps_r1 = match eps_r1 {
            Some(cached) => cached,
            None => self.eps(&lin2(1.0, x, -sigma_of(s1) * (R1 * h).exp_m1(), eps), s1)?,
        };
        let c = sigma_of(s2) * (R2 / R1) * ((R2 * h).exp_m1() / (R2 * h) - 1.0);
        let mut u2 = lin2(1.0, x, -sigma_of(s2) * (R2 * h).exp_m1() + c, eps);
        add_scaled(&mut u2, -c, &eps_r1);
        let eps_r2 = self.eps(&u2, s2)?;
        let e = sigma_of(t_next) / R2 * (h.exp_m1() / h - 1.0);
        let mut out = lin2(1.0, x, -sigma_of(t_next) * h.exp_m1() + e, eps);
        add_scaled(&mut out, -e, &eps_r2);
        let low_minus_high = cached.then(|| {
            // x_low = x − (a − b)·ε − b·ε_r1 with b = σ(t_next)/(2·r1)·expm1(h), r1 = 1/3; x_high as above.
            let b = sigma_of(t_next) / (2.0 * R1) * h.exp_m1();
            let mut diff = lin2(b - e, eps, -b, &eps_r1);
            add_scaled(&mut diff, e, &eps_r2);
            diff
        });
        Ok((out, low_minus_high))
    }
}

fn check_range(sigma_min: f64, sigma_max: f64) -> Result<()> {
    if !(sigma_min > 0.0 && sigma_max > 0.0) {
        return Err(Error::InvalidParameter {
            field: "sigmas",
            problem: format!("DPM fast/adaptive need σ_min and σ_max > 0, got {sigma_min} and {sigma_max}"),
        });
    }
    Ok(())
}

/// The (t_next to integrate to, σ_up of the added noise) of an ancestral DPM-Solver step.
fn ancestral_target(t: f64, t_next: f64, t_end: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (t_next, 0.0);
    }
    let (sd, _) = ancestral_step(sigma_of(t), sigma_of(t_next), eta);
    let t_next_ = t_end.min(t_of(sd));
    let su = (sigma_of(t_next).powi(2) - sigma_of(t_next_).powi(2)).sqrt();
    (t_next_, su)
}

pub(crate) fn fast(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigma_min: f64,
    sigma_max: f64,
    nfe: usize,
    eta: f64,
    s_noise: f64,
) -> Result<Tensor> {
    check_range(sigma_min, sigma_max)?;
    let (t_start, t_end) = (t_of(sigma_max), t_of(sigma_min));
    let m = nfe / 3 + 1;
    let ts: Vec<f64> = crate::model_schedule::linspace(t_start, t_end, m + 1).into_iter().map(f32_round).collect();
    let orders: Vec<usize> = if nfe.is_multiple_of(3) {
        std::iter::repeat_n(3, m.saturating_sub(2)).chain([2, 1]).collect()
    } else {
        std::iter::repeat_n(3, m - 1).chain([nfe % 3]).collect()
    };
    let mut solver = Solver { ctx };
    for (i, &order) in orders.iter().enumerate() {
        let (t, t_next) = (ts[i], ts[i + 1]);
        let (t_next_, su) = ancestral_target(t, t_next, t_end, eta);
        let eps = solver.eps(&x, t)?;
        let denoised = lin2(1.0, &x, -sigma_of(t), &eps);
        solver.ctx.step(i, sigma_of(t), &x, &denoised);
        x = match order {
            1 => solver.step_1(&x, t, t_next_, &eps),
            2 => solver.step_2(&x, t, t_next_, 0.5, &eps)?.0,
            _ => solver.step_3(&x, t, t_next_, &eps, None)?.0,
        };
        // k-diffusion draws this noise even when σ_up is 0.
        let noise = solver.ctx.noise(sigma_of(t), sigma_of(t_next), &x)?;
        add_scaled(&mut x, su * s_noise, &noise);
    }
    Ok(x)
}

/// k-diffusion's `PIDStepSizeController`.
struct Pid {
    h: f64,
    b1: f64,
    b2: f64,
    b3: f64,
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl Pid {
    fn new(h: f64, pcoeff: f64, icoeff: f64, dcoeff: f64, order: f64, accept_safety: f64) -> Self {
        Self {
            h,
            b1: (pcoeff + icoeff + dcoeff) / order,
            b2: -(pcoeff + 2.0 * dcoeff) / order,
            b3: dcoeff / order,
            accept_safety,
            errs: None,
        }
    }

    fn propose_step(&mut self, error: f64) -> bool {
        let inv_error = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv_error; 3]);
        errs[0] = inv_error;
        let factor = errs[0].powf(self.b1) * errs[1].powf(self.b2) * errs[2].powf(self.b3);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

pub(crate) fn adaptive(
    ctx: &mut Ctx<'_, '_>,
    mut x: Tensor,
    sigma_min: f64,
    sigma_max: f64,
    eta: f64,
    s_noise: f64,
) -> Result<Tensor> {
    const RTOL: f64 = 0.05;
    const ATOL: f64 = 0.0078;
    const H_INIT: f64 = 0.05;
    /// A denoiser that never lets the error controller accept (a CFG scale of 1e30) would loop forever;
    /// k-diffusion has no bound, sdrt stops with an error after this many attempts (3 model calls each).
    const MAX_ATTEMPTS: usize = 1000;
    check_range(sigma_min, sigma_max)?;
    let (t_start, t_end) = (t_of(sigma_max), t_of(sigma_min));
    // Order 3 (k-diffusion's default); the controller uses 1.5 when noise is added.
    let mut pid = Pid::new(H_INIT, 0.0, 1.0, 0.0, if eta != 0.0 { 1.5 } else { 3.0 }, 0.81);
    let mut s = t_start;
    let mut x_prev = x.clone();
    let mut steps = 0usize;
    let numel_sqrt = (x.len() as f64).sqrt();
    let mut solver = Solver { ctx };
    while s < t_end - 1e-5 {
        let t = t_end.min(f32_round(s + pid.h));
        let (t_, su) = ancestral_target(s, t, t_end, eta);
        let eps = solver.eps(&x, s)?;
        let denoised = lin2(1.0, &x, -sigma_of(s), &eps);
        let (x_low, eps_r1) = solver.step_2(&x, s, t_, 1.0 / 3.0, &eps)?;
        let (x_high, diff) = solver.step_3(&x, s, t_, &eps, Some(eps_r1))?;
        let diff = diff.unwrap_or_else(|| lin2(1.0, &x_low, -1.0, &x_high));
        let mut sum_sq = 0.0f64;
        ndarray::Zip::from(&x_low).and(&diff).and(&x_prev).for_each(|&lo, &d, &prev| {
            let delta = ATOL.max(RTOL * f64::from(lo).abs().max(f64::from(prev).abs()));
            let e = f64::from(d) / delta;
            sum_sq += e * e;
        });
        let error = sum_sq.sqrt() / numel_sqrt;
        if pid.propose_step(error) {
            x_prev = x_low;
            let noise = solver.ctx.noise(sigma_of(s), sigma_of(t), &x_high)?;
            x = lin2(1.0, &x_high, su * s_noise, &noise);
            s = t;
        }
        steps += 1;
        solver.ctx.total = steps;
        solver.ctx.step(steps - 1, sigma_of(s), &x, &denoised);
        if steps >= MAX_ATTEMPTS && s < t_end - 1e-5 {
            return Err(Error::InvalidParameter {
                field: "cfg_scale",
                problem: format!(
                    "DPM adaptive did not converge in {MAX_ATTEMPTS} attempts; lower cfg_scale or pick another sampler"
                ),
            });
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_accepts_small_errors_and_grows_the_step() {
        let mut pid = Pid::new(0.05, 0.0, 1.0, 0.0, 3.0, 0.81);
        assert!(pid.propose_step(0.1));
        assert!(pid.h > 0.05);
        let mut pid = Pid::new(0.05, 0.0, 1.0, 0.0, 3.0, 0.81);
        assert!(!pid.propose_step(100.0));
        assert!(pid.h < 0.05);
    }

    #[test]
    fn ancestral_target_without_eta_is_plain() {
        assert_eq!(ancestral_target(0.0, 1.0, 3.0, 0.0), (1.0, 0.0));
        let (t_, su) = ancestral_target(0.0, 1.0, 3.0, 1.0);
        assert!(t_ > 1.0 && su > 0.0);
    }
}
