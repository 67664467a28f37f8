//! A1111's per-image noise (`modules/rng.py` `ImageRNG`): initial noise with variation seeds (slerp) and seed
//! resize, then the per-image stream ancestral samplers draw from, re-seeded by ENSD after the first draw.

use ndarray::{Array3, ArrayD, Axis, Ix3, s};

use crate::denoiser::Tensor;
use crate::rng::{NoiseGenerator, RandomSource};
use crate::sampling::NoiseSource;
use crate::{Error, Result};

const STAGE: &str = "processing::noise";

/// Everything that determines the noise of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseParams {
    /// Per-image latent shape `(channels, height, width)`.
    pub latent_shape: [usize; 3],
    /// One seed per image (see [`crate::batch_seeds`]).
    pub seeds: Vec<u64>,
    /// One subseed per image; A1111 uses 0 for images beyond the list.
    pub subseeds: Vec<u64>,
    /// Variation strength; 0 disables variation seeds.
    pub subseed_strength: f32,
    /// `seed_resize_from_h`, `seed_resize_from_w` in pixels; used when both are > 0.
    pub seed_resize_from: (i64, i64),
    /// A1111's `randn_source`.
    pub source: RandomSource,
    /// Eta noise seed delta (A1111's ENSD option); 0 keeps drawing from the seed's own stream.
    pub eta_noise_seed_delta: u64,
}

/// Per-image generators for a batch; [`ImageRng::next`] gives the first noise, then sampler noise.
#[derive(Debug, Clone)]
pub struct ImageRng {
    params: NoiseParams,
    generators: Vec<NoiseGenerator>,
    is_first: bool,
}

impl ImageRng {
    /// Seeds one generator per image.
    pub fn new(params: NoiseParams) -> Result<Self> {
        if params.seeds.is_empty() {
            return Err(Error::InvalidParameter {
                field: "seeds",
                problem: "no images to make noise for; pass one seed per image".into(),
            });
        }
        if !params.subseed_strength.is_finite() {
            return Err(Error::InvalidParameter {
                field: "subseed_strength",
                problem: "must be a finite number, usually in [0, 1]".into(),
            });
        }
        let generators = params.seeds.iter().map(|&seed| NoiseGenerator::new(params.source, seed)).collect();
        Ok(Self { params, generators, is_first: true })
    }

    /// The batch's initial noise `(batch, C, H, W)` (A1111's `ImageRNG.first`).
    pub fn first(&mut self) -> Result<Tensor> {
        let _span = tracing::info_span!("processing::noise", images = self.params.seeds.len()).entered();
        self.is_first = false;
        let shape = self.params.latent_shape;
        let noise_shape = self.noise_shape();
        let mut images = Vec::with_capacity(self.params.seeds.len());
        for (i, &seed) in self.params.seeds.iter().enumerate() {
            let source = self.params.source;
            let subnoise = (self.params.subseed_strength != 0.0).then(|| {
                let subseed = self.params.subseeds.get(i).copied().unwrap_or(0);
                as_chw(crate::rng::randn(source, subseed, &noise_shape))
            });
            let mut noise = if noise_shape == shape {
                as_chw(self.generators[i].randn(&noise_shape))
            } else {
                as_chw(crate::rng::randn(source, seed, &noise_shape))
            };
            if let Some(subnoise) = subnoise {
                noise = slerp(self.params.subseed_strength, &noise, &subnoise);
            }
            if noise_shape != shape {
                let mut big = as_chw(self.generators[i].randn(&shape));
                paste_centered(&mut big, &noise);
                noise = big;
            }
            images.push(noise);
        }
        if self.params.eta_noise_seed_delta != 0 {
            self.generators = self
                .params
                .seeds
                .iter()
                .map(|&seed| {
                    seed.checked_add(self.params.eta_noise_seed_delta)
                        .map(|s| NoiseGenerator::new(self.params.source, s))
                        .ok_or(Error::InvalidParameter {
                            field: "eta_noise_seed_delta",
                            problem: format!("seed {seed} + ENSD overflows 64 bits; use a smaller delta"),
                        })
                })
                .collect::<Result<_>>()?;
        }
        Ok(stack(&images))
    }

    /// The next noise of every image's stream; the first call returns [`ImageRng::first`].
    #[allow(clippy::should_implement_trait, reason = "A1111's ImageRNG.next(); it is fallible, not an iterator")]
    pub fn next(&mut self) -> Result<Tensor> {
        if self.is_first {
            return self.first();
        }
        let shape = self.params.latent_shape;
        let images: Vec<Array3<f32>> = self.generators.iter_mut().map(|g| as_chw(g.randn(&shape))).collect();
        Ok(stack(&images))
    }

    /// A1111 draws the old-size noise at `(C, from_h // 8, from_w // 8)` when both sizes are positive.
    fn noise_shape(&self) -> [usize; 3] {
        let [c, h, w] = self.params.latent_shape;
        match self.params.seed_resize_from {
            (from_h, from_w) if from_h > 0 && from_w > 0 => [c, (from_h / 8) as usize, (from_w / 8) as usize],
            _ => [c, h, w],
        }
    }
}

impl NoiseSource for ImageRng {
    fn noise(&mut self, _sigma: f64, _sigma_next: f64, like: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.params.latent_shape;
        let expected = [self.params.seeds.len(), c, h, w];
        if like.shape() != expected {
            return Err(Error::Shape {
                stage: STAGE,
                tensor: "latent",
                found: like.shape().to_vec(),
                expected: format!("{expected:?} (one noise stream per seed)"),
            });
        }
        self.next()
    }
}

fn as_chw(noise: ArrayD<f32>) -> Array3<f32> {
    noise.into_dimensionality::<Ix3>().expect("drawn with a three-axis shape")
}

fn stack(images: &[Array3<f32>]) -> Tensor {
    let views: Vec<_> = images.iter().map(|a| a.view()).collect();
    ndarray::stack(Axis(0), &views).expect("images share one shape").into_dyn()
}

/// A1111's `slerp(val, low, high)` on one image: vectors are the H axis of each (channel, column); when the
/// mean cosine exceeds 0.9995 it blends linearly with the weights the other way round (`low·v + high·(1−v)`).
fn slerp(val: f32, low: &Array3<f32>, high: &Array3<f32>) -> Array3<f32> {
    let low_unit = normalised_along_h(low);
    let high_unit = normalised_along_h(high);
    let dot =
        (&low_unit * &high_unit).map_axis(Axis(1), |column| column.iter().map(|&v| f64::from(v)).sum::<f64>() as f32);
    let mean_dot = dot.iter().map(|&d| f64::from(d)).sum::<f64>() / dot.len().max(1) as f64;
    if mean_dot > 0.9995 {
        return low * val + high * (1.0 - val);
    }
    let mut out = Array3::zeros(low.raw_dim());
    for ((c, w), &d) in dot.indexed_iter() {
        let omega = d.acos();
        let so = omega.sin();
        let weight_low = ((1.0 - val) * omega).sin() / so;
        let weight_high = (val * omega).sin() / so;
        for h in 0..low.shape()[1] {
            out[[c, h, w]] = weight_low * low[[c, h, w]] + weight_high * high[[c, h, w]];
        }
    }
    out
}

fn normalised_along_h(x: &Array3<f32>) -> Array3<f32> {
    let norms =
        x.map_axis(Axis(1), |column| column.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32);
    let mut out = x.clone();
    for ((c, w), &norm) in norms.indexed_iter() {
        out.slice_mut(s![c, .., w]).mapv_inplace(|v| v / norm);
    }
    out
}

/// A1111's seed-resize paste: `small` centred in `big`, cropped where it is larger.
fn paste_centered(big: &mut Array3<f32>, small: &Array3<f32>) {
    let (big_h, big_w) = (big.shape()[1] as i64, big.shape()[2] as i64);
    let (small_h, small_w) = (small.shape()[1] as i64, small.shape()[2] as i64);
    let dx = (big_w - small_w).div_euclid(2);
    let dy = (big_h - small_h).div_euclid(2);
    let w = if dx >= 0 { small_w } else { small_w + 2 * dx };
    let h = if dy >= 0 { small_h } else { small_h + 2 * dy };
    let (tx, ty) = (dx.max(0), dy.max(0));
    let (sx, sy) = ((-dx).max(0), (-dy).max(0));
    // Python slices clamp at the array's end; so do these bounds.
    let h = h.min(big_h - ty).min(small_h - sy).max(0);
    let w = w.min(big_w - tx).min(small_w - sx).max(0);
    let (h, w, tx, ty, sx, sy) = (h as usize, w as usize, tx as usize, ty as usize, sx as usize, sy as usize);
    big.slice_mut(s![.., ty..ty + h, tx..tx + w]).assign(&small.slice(s![.., sy..sy + h, sx..sx + w]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::CpuKernel;

    fn params(seeds: Vec<u64>) -> NoiseParams {
        NoiseParams {
            latent_shape: [4, 6, 10],
            subseeds: seeds.iter().map(|s| s + 100).collect(),
            seeds,
            subseed_strength: 0.0,
            seed_resize_from: (0, 0),
            source: RandomSource::Cpu(CpuKernel::Avx2),
            eta_noise_seed_delta: 0,
        }
    }

    #[test]
    fn batched_and_one_by_one_streams_agree() {
        let mut batch = ImageRng::new(params(vec![5, 6])).unwrap();
        let mut alone = ImageRng::new(params(vec![6])).unwrap();
        for _ in 0..3 {
            let b = batch.next().unwrap();
            let a = alone.next().unwrap();
            assert_eq!(b.index_axis(Axis(0), 1), a.index_axis(Axis(0), 0));
        }
    }

    #[test]
    fn ensd_reseeds_after_the_first_draw() {
        let mut p = params(vec![5]);
        p.eta_noise_seed_delta = 31337;
        let mut rng = ImageRng::new(p).unwrap();
        rng.next().unwrap();
        let second = rng.next().unwrap();
        let fresh = crate::rng::randn(RandomSource::Cpu(CpuKernel::Avx2), 5 + 31337, &[4, 6, 10]);
        assert_eq!(second.index_axis(Axis(0), 0), fresh);
    }

    #[test]
    fn noise_source_rejects_a_latent_of_another_shape() {
        let mut rng = ImageRng::new(params(vec![5])).unwrap();
        let wrong = Tensor::zeros(vec![2, 4, 6, 10]);
        assert!(matches!(rng.noise(1.0, 0.5, &wrong), Err(Error::Shape { .. })));
    }

    #[test]
    fn tiny_resize_sources_do_not_panic() {
        let mut p = params(vec![5]);
        p.seed_resize_from = (7, 900);
        let noise = ImageRng::new(p).unwrap().first().unwrap();
        assert_eq!(noise.shape(), &[1, 4, 6, 10]);
    }
}
