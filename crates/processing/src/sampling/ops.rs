//! Elementwise tensor arithmetic for the samplers: f32 storage, f64 scalars (k-diffusion's scalars are
//! float32 tensors; computing them in f64 keeps us within float32 rounding of its results).

use ndarray::Zip;

use crate::denoiser::Tensor;

/// a·x + b·y.
pub(crate) fn lin2(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Tensor {
    let mut out = x.clone();
    Zip::from(&mut out).and(y).for_each(|o, &y| *o = (a * f64::from(*o) + b * f64::from(y)) as f32);
    out
}

/// x ← x + b·y.
pub(crate) fn add_scaled(x: &mut Tensor, b: f64, y: &Tensor) {
    Zip::from(x).and(y).for_each(|o, &y| *o = (f64::from(*o) + b * f64::from(y)) as f32);
}

/// x ← a·x + b·y.
pub(crate) fn scale_add(x: &mut Tensor, a: f64, b: f64, y: &Tensor) {
    Zip::from(x).and(y).for_each(|o, &y| *o = (a * f64::from(*o) + b * f64::from(y)) as f32);
}

/// Karras' ODE derivative (x − x0)/σ.
pub(crate) fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Tensor {
    let inv = 1.0 / sigma;
    let mut out = x.clone();
    Zip::from(&mut out).and(denoised).for_each(|o, &d| *o = ((f64::from(*o) - f64::from(d)) * inv) as f32);
    out
}

/// Σ cᵢ·tᵢ over equally shaped tensors.
pub(crate) fn weighted_sum(terms: &[(f64, &Tensor)]) -> Tensor {
    let mut out = Tensor::zeros(terms[0].1.raw_dim());
    for (c, t) in terms {
        add_scaled(&mut out, *c, t);
    }
    out
}

/// k-diffusion `get_ancestral_step`: (σ_down, σ_up) for an ancestral step from `from` to `to`.
///
/// σ_down = √(σ_to² − σ_up²) cancels badly when σ_to ≪ σ_from (σ_up ≈ σ_to), so its value depends on
/// the float32 rounding A1111's float32 σ tensors get: σ_up rounded to f32, then the difference of the
/// f32 squares taken in f32, as torch does. Computing it exactly instead moves a 2-step run by ~1e-4.
pub(crate) fn ancestral_step(from: f64, to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (to, 0.0);
    }
    let (from, to) = (f64::from(from as f32), f64::from(to as f32));
    let up = (eta * (to * to * (from * from - to * to) / (from * from)).sqrt()).min(to) as f32;
    let to32 = to as f32;
    let down = (to32 * to32 - up * up).max(0.0).sqrt();
    (f64::from(down), f64::from(up))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn ancestral_step_splits_variance() {
        let (down, up) = ancestral_step(2.0, 1.0, 1.0);
        assert!((down * down + up * up - 1.0).abs() < 1e-6, "float32 rounding only");
        assert!(up > 0.0 && down < 1.0);
        assert_eq!(ancestral_step(2.0, 1.0, 0.0), (1.0, 0.0));
    }

    #[test]
    fn arithmetic_helpers() {
        let x = Tensor::from_elem(IxDyn(&[2]), 3.0);
        let y = Tensor::from_elem(IxDyn(&[2]), 1.0);
        assert_eq!(lin2(2.0, &x, -1.0, &y)[0], 5.0);
        assert_eq!(to_d(&x, 2.0, &y)[1], 1.0);
        assert_eq!(weighted_sum(&[(1.0, &x), (2.0, &y)])[0], 5.0);
    }
}
