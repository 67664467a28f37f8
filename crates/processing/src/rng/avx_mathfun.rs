//! Scalar re-statement of the Cephes-style float32 `log` and `sincos` polynomials that torch's AVX2 normal
//! kernel uses (`log256_ps`, `sincos256_ps` in ATen's avx_mathfun.h), evaluated lane by lane in the same
//! operation order so the results are bit-identical to the vector code.
//!
//! torch's AVX2 kernels are built by GCC with FMA enabled and `-ffp-contract=fast`, so every multiply that
//! feeds an add became a fused multiply-add (when both addends are products, the first one is fused). The
//! `mul_add` calls below are those contractions; without them 18 of 16,384 values of a 4×64×64 draw differ
//! by one ulp. `f32::mul_add` is exact on every target (a libm `fmaf` call where the CPU has no FMA).

// The C header writes these as double literals that the compiler rounds to float; rounding the same
// literals the same way keeps every bit, hence the "excessive" digits and the spelled-out 1/√2.
#![allow(clippy::excessive_precision, clippy::approx_constant)]
const SQRT_HALF: f32 = 0.707106781186547524_f64 as f32;
const LOG_P: [f32; 9] = [
    7.0376836292E-2_f64 as f32,
    -1.1514610310E-1_f64 as f32,
    1.1676998740E-1_f64 as f32,
    -1.2420140846E-1_f64 as f32,
    1.4249322787E-1_f64 as f32,
    -1.6668057665E-1_f64 as f32,
    2.0000714765E-1_f64 as f32,
    -2.4999993993E-1_f64 as f32,
    3.3333331174E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.12194440e-4_f64 as f32;
const LOG_Q2: f32 = 0.693359375_f64 as f32;

const MINUS_DP1: f32 = -0.78515625_f64 as f32;
const MINUS_DP2: f32 = -2.4187564849853515625e-4_f64 as f32;
const MINUS_DP3: f32 = -3.77489497744594108e-8_f64 as f32;
const SIN_P: [f32; 3] = [-1.9515295891E-4_f64 as f32, 8.3321608736E-3_f64 as f32, -1.6666654611E-1_f64 as f32];
const COS_P: [f32; 3] =
    [2.443315711809948E-005_f64 as f32, -1.388731625493765E-003_f64 as f32, 4.166664568298827E-002_f64 as f32];
const FOUR_OVER_PI: f32 = 1.27323954473516_f64 as f32;

/// `log256_ps` for one lane (inputs here are in (0, 1], so the NaN mask never fires).
pub(crate) fn log_ps(x: f32) -> f32 {
    let x = x.max(f32::from_bits(0x0080_0000));
    let exponent_bits = (x.to_bits() >> 23) as i32 - 0x7f;
    let mut m = f32::from_bits((x.to_bits() & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent_bits as f32 + 1.0;
    let below = m < SQRT_HALF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    m += tmp;
    let z = m * m;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(m, p);
    }
    y *= m;
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    let r = m + y;
    e.mul_add(LOG_Q2, r)
}

/// `sincos256_ps` for one lane; returns `(sin x, cos x)`.
pub(crate) fn sincos_ps(x: f32) -> (f32, f32) {
    let sign_in = x.to_bits() & 0x8000_0000;
    let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let scaled = x * FOUR_OVER_PI;
    // cvttps truncates; out-of-range lanes give i32::MIN, as `as` saturation does not; inputs are < 2π here.
    let mut j = (scaled as i32).wrapping_add(1) & !1;
    let y = j as f32;
    let swap_sin = ((j & 4) as u32) << 29;
    let poly_is_sin = (j & 2) == 0;
    x = y.mul_add(MINUS_DP1, x);
    x = y.mul_add(MINUS_DP2, x);
    x = y.mul_add(MINUS_DP3, x);
    j = j.wrapping_sub(2);
    let sign_cos = ((!j & 4) as u32) << 29;
    let sign_sin = sign_in ^ swap_sin;

    let z = x * x;
    let mut c = COS_P[0];
    c = c.mul_add(z, COS_P[1]);
    c = c.mul_add(z, COS_P[2]);
    c *= z;
    c = c.mul_add(z, -(z * 0.5));
    c += 1.0;

    let mut s = SIN_P[0];
    s = s.mul_add(z, SIN_P[1]);
    s = s.mul_add(z, SIN_P[2]);
    s *= z;
    s = s.mul_add(x, x);

    let (sin, cos) = if poly_is_sin { (s, c) } else { (c, s) };
    (f32::from_bits(sin.to_bits() ^ sign_sin), f32::from_bits(cos.to_bits() ^ sign_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_close_to_the_true_logarithm() {
        for i in 1..=1000 {
            let x = i as f32 / 1000.0;
            assert!((log_ps(x) - x.ln()).abs() <= 2.0 * f32::EPSILON * x.ln().abs().max(1.0), "log({x})");
        }
    }

    #[test]
    fn sincos_is_close_to_the_true_functions() {
        for i in 0..1000 {
            let x = i as f32 * std::f32::consts::TAU / 1000.0;
            let (s, c) = sincos_ps(x);
            assert!((s - x.sin()).abs() < 3e-7, "sin({x}) = {s}");
            assert!((c - x.cos()).abs() < 3e-7, "cos({x}) = {c}");
        }
    }
}
