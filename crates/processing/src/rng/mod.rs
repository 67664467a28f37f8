//! A1111's random sources for initial and sampler noise: `CPU` (torch's CPU generator, bit-exact),
//! `NV` (A1111's Philox port) and `GPU` (computed with the NV algorithm, which is what CUDA's Philox gives).

mod avx_mathfun;
mod mt19937;
mod philox;
mod torch_cpu;

use ndarray::{ArrayD, IxDyn};

pub use torch_cpu::CpuKernel;

use philox::PhiloxGenerator;
use torch_cpu::TorchCpuGenerator;

/// A1111's `randn_source` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RandomSource {
    /// `torch.randn` on a CPU generator (A1111's `CPU`); [`CpuKernel`] picks the vectorised or scalar kernel.
    Cpu(CpuKernel),
    /// torch CUDA `randn`; sdrt computes it with the NV algorithm (Philox4x32-10), which CUDA also runs.
    #[default]
    Gpu,
    /// A1111's NumPy Philox port (`NV`).
    Nv,
}

/// A seeded generator whose consecutive [`NoiseGenerator::randn`] calls continue one stream, as a torch
/// generator (CPU: MT19937 state advances) or A1111's Philox generator (offset + 1 per call) does.
#[derive(Clone)]
pub struct NoiseGenerator {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Torch(Box<TorchCpuGenerator>),
    Philox(PhiloxGenerator),
}

impl std::fmt::Debug for NoiseGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Torch(_) => "torch-cpu",
            Inner::Philox(_) => "philox",
        };
        f.debug_struct("NoiseGenerator").field("kind", &kind).finish_non_exhaustive()
    }
}

impl NoiseGenerator {
    /// A fresh generator for `seed` (torch: `manual_seed(seed)`, which uses only the low 32 bits on CPU).
    pub fn new(source: RandomSource, seed: u64) -> Self {
        let inner = match source {
            RandomSource::Cpu(kernel) => Inner::Torch(Box::new(TorchCpuGenerator::new(seed, kernel))),
            RandomSource::Gpu | RandomSource::Nv => Inner::Philox(PhiloxGenerator::new(seed)),
        };
        Self { inner }
    }

    /// Standard normal values in C order, continuing this generator's stream.
    pub fn randn(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let n = shape.iter().product();
        let values = match &mut self.inner {
            Inner::Torch(g) => g.randn(n),
            Inner::Philox(g) => g.randn(n),
        };
        ArrayD::from_shape_vec(IxDyn(shape), values).expect("the value count is the product of the shape")
    }
}

/// The first draw of a fresh generator: A1111's `randn(seed, shape)`.
pub fn randn(source: RandomSource, seed: u64, shape: &[usize]) -> ArrayD<f32> {
    NoiseGenerator::new(source, seed).randn(shape)
}
