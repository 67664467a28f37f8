//! `torch.randn` on a CPU generator: MT19937 uniforms, then torch's Box-Muller, with the kernel choice torch
//! makes (scalar double-precision path with a cached second value below 16 elements; blocks of 16 float32
//! values at and above 16, vectorised on AVX2/AVX-512 machines).

use super::avx_mathfun::{log_ps, sincos_ps};
use super::mt19937::Mt19937;

/// Which of torch's CPU normal kernels to reproduce for tensors of 16 or more elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKernel {
    /// `normal_fill_AVX2` (also what AVX-512 builds run): float32 Cephes polynomials. What A1111 users get.
    #[default]
    Avx2,
    /// `normal_fill` (`ATEN_CPU_CAPABILITY=default`): libm float32 `log`, `cos`, `sin`.
    Scalar,
}

/// Minimum element count for torch's block-of-16 path.
const BLOCK: usize = 16;

/// A CPU generator as `torch.Generator("cpu").manual_seed(seed)` creates it.
#[derive(Clone)]
pub(crate) struct TorchCpuGenerator {
    engine: Mt19937,
    /// torch keeps the second Box-Muller value of the scalar path for the next scalar draw.
    cached_normal: Option<f64>,
    kernel: CpuKernel,
}

impl TorchCpuGenerator {
    pub(crate) fn new(seed: u64, kernel: CpuKernel) -> Self {
        Self { engine: Mt19937::new(seed), cached_normal: None, kernel }
    }

    /// Fills `n` standard normal values, advancing the generator as one `torch.randn` call does.
    pub(crate) fn randn(&mut self, n: usize) -> Vec<f32> {
        if n >= BLOCK { self.normal_fill(n) } else { (0..n).map(|_| self.scalar_normal() as f32).collect() }
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: 24 random bits scaled by 2⁻²⁴.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: 53 random bits of `random64()` scaled by 2⁻⁵³.
    fn uniform_f64(&mut self) -> f64 {
        (self.engine.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>` with mean 0 and std 1, including torch's cached second value.
    fn scalar_normal(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `normal_fill` / `normal_fill_AVX2`: all uniforms first, Box-Muller per block of 16, and a ragged tail
    /// handled by redrawing 16 fresh uniforms for the last 16 positions.
    fn normal_fill(&mut self, n: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        let mut start = 0;
        while start + BLOCK <= n {
            self.box_muller_16(&mut data[start..start + BLOCK]);
            start += BLOCK;
        }
        if !n.is_multiple_of(BLOCK) {
            let tail = &mut data[n - BLOCK..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            self.box_muller_16(tail);
        }
        data
    }

    fn box_muller_16(&self, block: &mut [f32]) {
        let (first, second) = block.split_at_mut(BLOCK / 2);
        for (a, b) in first.iter_mut().zip(second.iter_mut()) {
            let (n1, n2) = match self.kernel {
                CpuKernel::Avx2 => box_muller_avx2(*a, *b),
                CpuKernel::Scalar => box_muller_scalar(*a, *b),
            };
            *a = n1;
            *b = n2;
        }
    }
}

/// One lane of `normal_fill_16_AVX2`.
fn box_muller_avx2(uniform1: f32, uniform2: f32) -> (f32, f32) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let radius = (-2.0 * log_ps(1.0 - uniform1)).sqrt();
    let (sin, cos) = sincos_ps(two_pi * uniform2);
    (radius * cos, radius * sin)
}

/// One pair of `normal_fill_16<float>`: float32 libm calls, the angle rounded from double.
fn box_muller_scalar(uniform1: f32, uniform2: f32) -> (f32, f32) {
    let radius = (-2.0 * (1.0 - uniform1).ln()).sqrt();
    let theta = (2.0 * std::f64::consts::PI * f64::from(uniform2)) as f32;
    (radius * theta.cos(), radius * theta.sin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_seed_zero_first_values() {
        // torch.randn(3, generator=torch.Generator().manual_seed(0)) -> [1.5410, -0.2934, -2.1788]
        let v = TorchCpuGenerator::new(0, CpuKernel::Avx2).randn(3);
        assert!((v[0] - 1.5410).abs() < 1e-4 && (v[1] + 0.2934).abs() < 1e-4 && (v[2] + 2.1788).abs() < 1e-4, "{v:?}");
    }

    #[test]
    fn an_odd_scalar_draw_leaves_a_cached_value_for_the_next_call() {
        let mut g = TorchCpuGenerator::new(3, CpuKernel::Avx2);
        let two = g.randn(2);
        let mut h = TorchCpuGenerator::new(3, CpuKernel::Avx2);
        let one = h.randn(1);
        let next = h.randn(1);
        assert_eq!(vec![one[0], next[0]], two);
    }

    #[test]
    fn kernels_agree_closely_on_blocks() {
        let a = TorchCpuGenerator::new(5, CpuKernel::Avx2).randn(4096);
        let b = TorchCpuGenerator::new(5, CpuKernel::Scalar).randn(4096);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
    }
}
