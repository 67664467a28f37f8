//! UniPC as bundled in A1111 (`modules/models/diffusion/uni_pc`): multistep predictor–corrector in
//! data-prediction form over the discrete VP noise schedule, with A1111's settings (variant, skip type,
//! order, lower-order final).

use super::Ctx;
use super::ops::{add_scaled, lin2};
use super::timesteps::eps_at;
use crate::denoiser::Tensor;
use crate::error::{Error, Result};
use crate::model_schedule::ModelSchedule;

/// B(h) of the UniPC update (A1111 `uni_pc_variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniPcVariant {
    /// B(h) = h (A1111's default).
    #[default]
    Bh1,
    /// B(h) = eʰ − 1.
    Bh2,
}

/// How the continuous time grid is spaced (A1111 `uni_pc_skip_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniPcSkip {
    /// Uniform in t (A1111's default).
    #[default]
    TimeUniform,
    /// Uniform in log-SNR λ.
    LogSnr,
    /// Uniform in √t.
    TimeQuadratic,
}

/// A1111's UniPC settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniPcOptions {
    /// `uni_pc_variant`.
    pub variant: UniPcVariant,
    /// `uni_pc_skip_type`.
    pub skip: UniPcSkip,
    /// `uni_pc_order` (1..=5; 3 by default); sampling needs more steps than this.
    pub order: usize,
    /// `uni_pc_lower_order_final`.
    pub lower_order_final: bool,
}

impl Default for UniPcOptions {
    fn default() -> Self {
        Self { variant: UniPcVariant::Bh1, skip: UniPcSkip::TimeUniform, order: 3, lower_order_final: true }
    }
}

impl UniPcOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(1..=5).contains(&self.order) {
            return Err(Error::InvalidParameter {
                field: "uni_pc_order",
                problem: format!("{} must be within 1..=5", self.order),
            });
        }
        Ok(())
    }
}

/// The bundled `NoiseScheduleVP('discrete')`: log αₜ piecewise linear over tₙ = (n+1)/1000.
struct VpSchedule {
    t: Vec<f64>,
    log_alpha: Vec<f64>,
}

impl VpSchedule {
    fn new(model: &ModelSchedule) -> Self {
        let n = model.alphas_cumprod().len();
        // torch.linspace(0, 1, N + 1)[1:] in float32, as A1111 builds it.
        let t = (1..=n).map(|i| f64::from(torch_linspace_f32(0.0, 1.0, n + 1, i))).collect();
        let log_alpha = model.alphas_cumprod().iter().map(|a| 0.5 * a.ln()).collect();
        Self { t, log_alpha }
    }

    fn log_alpha_at(&self, t: f64) -> f64 {
        interp(t, &self.t, &self.log_alpha)
    }

    fn alpha(&self, t: f64) -> f64 {
        self.log_alpha_at(t).exp()
    }

    fn std(&self, t: f64) -> f64 {
        (1.0 - (2.0 * self.log_alpha_at(t)).exp()).sqrt()
    }

    fn lambda(&self, t: f64) -> f64 {
        let la = self.log_alpha_at(t);
        la - 0.5 * (1.0 - (2.0 * la).exp()).ln()
    }

    fn inverse_lambda(&self, lambda: f64) -> f64 {
        let log_alpha = -0.5 * (0.0f64).max(-2.0 * lambda) - 0.5 * (1.0 + (-(2.0 * lambda).abs()).exp()).ln();
        let xs: Vec<f64> = self.log_alpha.iter().rev().copied().collect();
        let ys: Vec<f64> = self.t.iter().rev().copied().collect();
        interp(log_alpha, &xs, &ys)
    }
}

/// `numpy.interp`-style piecewise-linear interpolation with linear extrapolation at the ends, as the
/// bundled `interpolate_fn` does.
fn interp(x: f64, xs: &[f64], ys: &[f64]) -> f64 {
    let last = xs.len() - 1;
    let i = xs.partition_point(|&v| v <= x).clamp(1, last) - 1;
    ys[i] + (x - xs[i]) * (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
}

/// Element `i` of `torch.linspace(start, end, steps)` in float32 (torch fills the two halves from the
/// two ends).
fn torch_linspace_f32(start: f32, end: f32, steps: usize, i: usize) -> f32 {
    if steps == 1 {
        return start;
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    if i < halfway { start + step * i as f32 } else { end - step * (steps - 1 - i) as f32 }
}

/// The continuous time grid from `t_start` down to 1/N, `steps + 1` points.
fn time_grid(vp: &VpSchedule, skip: UniPcSkip, t_start: f32, t_end: f32, steps: usize) -> Vec<f32> {
    match skip {
        UniPcSkip::TimeUniform => (0..=steps).map(|i| torch_linspace_f32(t_start, t_end, steps + 1, i)).collect(),
        UniPcSkip::LogSnr => {
            let (l_t, l_0) = (vp.lambda(f64::from(t_start)) as f32, vp.lambda(f64::from(t_end)) as f32);
            (0..=steps)
                .map(|i| vp.inverse_lambda(f64::from(torch_linspace_f32(l_t, l_0, steps + 1, i))) as f32)
                .collect()
        }
        UniPcSkip::TimeQuadratic => {
            let (a, b) = (t_start.sqrt(), t_end.sqrt());
            (0..=steps).map(|i| torch_linspace_f32(a, b, steps + 1, i).powi(2)).collect()
        }
    }
}

/// Solves the small dense system `a·x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (value, pivot_value) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *value -= f * pivot_value;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

struct UniPc<'m> {
    model: &'m ModelSchedule,
    vp: VpSchedule,
    variant: UniPcVariant,
    report_step: usize,
}

impl UniPc<'_> {
    /// The data prediction x0 at continuous time t (model time (t − 1/N)·1000, float32 as A1111).
    fn model_x0(&self, ctx: &mut Ctx<'_, '_>, x: &Tensor, t: f32) -> Result<Tensor> {
        let n = self.vp.t.len() as f32;
        let t_in = (t - 1.0 / n) * 1000.0;
        let (eps, _) = eps_at(ctx, self.model, x, f64::from(t_in))?;
        let t = f64::from(t);
        Ok(lin2(1.0 / self.vp.alpha(t), x, -self.vp.std(t) / self.vp.alpha(t), &eps))
    }

    /// One UniP(C) update from the stored predictions to time `t`; returns x and, when the corrector ran,
    /// the model's x0 at the new point.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        ctx: &mut Ctx<'_, '_>,
        x: &Tensor,
        mlist: &[Tensor],
        tlist: &[f32],
        t: f32,
        order: usize,
        use_corrector: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let vp = &self.vp;
        let tp0 = f64::from(tlist[tlist.len() - 1]);
        let t64 = f64::from(t);
        let (lam_p0, lam_t) = (vp.lambda(tp0), vp.lambda(t64));
        let m0 = &mlist[mlist.len() - 1];
        let (s_p0, s_t, a_t) = (vp.std(tp0), vp.std(t64), vp.alpha(t64));
        let h = lam_t - lam_p0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let rk = (vp.lambda(f64::from(tlist[tlist.len() - 1 - i])) - lam_p0) / h;
            rks.push(rk);
            d1s.push(lin2(1.0 / rk, &mlist[mlist.len() - 1 - i], -1.0 / rk, m0));
        }
        rks.push(1.0);
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let b_h = match self.variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => hh.exp_m1(),
        };
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect::<Vec<f64>>());
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let rhos_p = match d1s.len() {
            0 => Vec::new(),
            _ if order == 2 => vec![0.5],
            _ => solve(r[..order - 1].iter().map(|row| row[..order - 1].to_vec()).collect(), b[..order - 1].to_vec()),
        };
        let x_t_ = lin2(s_t / s_p0, x, -a_t * h_phi_1, m0);
        let mut x_t = x_t_.clone();
        for (rho, d) in rhos_p.iter().zip(&d1s) {
            add_scaled(&mut x_t, -a_t * b_h * rho, d);
        }
        if !use_corrector {
            return Ok((x_t, None));
        }
        let rhos_c = if order == 1 { vec![0.5] } else { solve(r, b) };
        let model_t = self.model_x0(ctx, &x_t, t)?;
        let mut corrected = x_t_;
        for (rho, d) in rhos_c.iter().zip(&d1s) {
            add_scaled(&mut corrected, -a_t * b_h * rho, d);
        }
        let last = rhos_c[rhos_c.len() - 1];
        add_scaled(&mut corrected, -a_t * b_h * last, &model_t);
        add_scaled(&mut corrected, a_t * b_h * last, m0);
        Ok((corrected, Some(model_t)))
    }

    fn report(&mut self, ctx: &mut Ctx<'_, '_>, x: &Tensor, model_x: &Tensor) {
        ctx.step(self.report_step, 0.0, x, model_x);
        self.report_step += 1;
    }
}

/// A1111's `unipc`: `steps = len(timesteps)`; txt2img starts at t = 1, img2img at the last timestep/1000 +
/// 1/1000.
pub(crate) fn sample(
    ctx: &mut Ctx<'_, '_>,
    model: &ModelSchedule,
    mut x: Tensor,
    timesteps: &[usize],
    img2img: bool,
    options: &UniPcOptions,
) -> Result<Tensor> {
    let steps = timesteps.len();
    let order = options.order;
    if steps < order {
        return Err(Error::InvalidParameter {
            field: "steps",
            problem: format!("UniPC order {order} needs at least {order} timesteps, got {steps}; use more steps"),
        });
    }
    let n = model.alphas_cumprod().len();
    let t_end = 1.0 / n as f32;
    let t_start = if img2img { timesteps[steps - 1] as f32 / 1000.0 + 1.0 / 1000.0 } else { 1.0 };
    let mut solver = UniPc { model, vp: VpSchedule::new(model), variant: options.variant, report_step: 0 };
    let grid = time_grid(&solver.vp, options.skip, t_start, t_end, steps);

    let mut mlist = vec![solver.model_x0(ctx, &x, grid[0])?];
    let mut tlist = vec![grid[0]];
    for (init_order, &t) in grid.iter().enumerate().take(order).skip(1) {
        let (next, model_x) = solver.update(ctx, &x, &mlist, &tlist, t, init_order, true)?;
        x = next;
        let model_x = match model_x {
            Some(m) => m,
            None => solver.model_x0(ctx, &x, t)?,
        };
        solver.report(ctx, &x, &model_x);
        mlist.push(model_x);
        tlist.push(t);
    }
    for (step, &t) in grid.iter().enumerate().skip(order) {
        let step_order = if options.lower_order_final { order.min(steps + 1 - step) } else { order };
        let (next, model_x) = solver.update(ctx, &x, &mlist, &tlist, t, step_order, step != steps)?;
        x = next;
        mlist.rotate_left(1);
        tlist.rotate_left(1);
        tlist[order - 1] = t;
        if step < steps {
            let model_x = match model_x {
                Some(m) => m,
                None => solver.model_x0(ctx, &x, t)?,
            };
            solver.report(ctx, &x, &model_x);
            mlist[order - 1] = model_x;
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_small_system() {
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]);
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12);
    }

    #[test]
    fn lambda_round_trips() {
        let vp = VpSchedule::new(&ModelSchedule::scaled_linear());
        for t in [0.05, 0.3, 0.77, 0.99] {
            assert!((vp.inverse_lambda(vp.lambda(t)) - t).abs() < 1e-6, "{t}");
        }
    }

    #[test]
    fn torch_linspace_matches_endpoints() {
        assert_eq!(torch_linspace_f32(1.0, 0.001, 11, 0), 1.0);
        assert_eq!(torch_linspace_f32(1.0, 0.001, 11, 10), 0.001);
    }
}
